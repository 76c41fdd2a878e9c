"""Fault injection for the service's fault tests; inert unless its environment variables are set.

- `DLLMSERVE_FAULT_CRASH_ON_TEXT=S`: the worker process exits at once when it admits a request
  whose text prompt contains S, like a request that crashes its worker.
- `DLLMSERVE_FAULT_STALL_ON_TEXT=S`: the first engine step after such a request is admitted
  sleeps `DLLMSERVE_FAULT_STALL_S` seconds (default 3600), like a request that freezes its
  worker (the watchdog's case).
- `DLLMSERVE_FAULT_SLOW_ON_TEXT=S`: the first engine step after such a request is admitted
  sleeps `DLLMSERVE_FAULT_SLOW_LAYER_S` seconds (default 1) after every layer of the forward:
  an iteration that is slow but progressing, which the watchdog must leave alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from dllmserve.logs import EVENT_ATTR
from dllmserve.models import progress

log = logging.getLogger(__name__)

CRASH_ENV = "DLLMSERVE_FAULT_CRASH_ON_TEXT"
STALL_ENV = "DLLMSERVE_FAULT_STALL_ON_TEXT"
STALL_S_ENV = "DLLMSERVE_FAULT_STALL_S"
SLOW_ENV = "DLLMSERVE_FAULT_SLOW_ON_TEXT"
SLOW_LAYER_S_ENV = "DLLMSERVE_FAULT_SLOW_LAYER_S"


class Faults:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.crash_on = env.get(CRASH_ENV, "")
        self.stall_on = env.get(STALL_ENV, "")
        self.stall_s = float(env.get(STALL_S_ENV, "3600"))
        self._stall_next = False
        self.slow_on = env.get(SLOW_ENV, "")
        self.slow_layer_s = float(env.get(SLOW_LAYER_S_ENV, "1"))
        self._slow_next = False

    def on_admit(self, request_id: str, prompt: object) -> None:
        """Acts on a text prompt (token ids and chat messages are never faults)."""
        if not isinstance(prompt, str):
            return
        if self.crash_on and self.crash_on in prompt:
            log.error("fault injection: crashing", extra={EVENT_ATTR: {"request_id": request_id}})
            os._exit(17)
        if self.stall_on and self.stall_on in prompt:
            fields = {EVENT_ATTR: {"request_id": request_id}}
            log.error("fault injection: the next step stalls", extra=fields)
            self._stall_next = True
        if self.slow_on and self.slow_on in prompt:
            fields = {EVENT_ATTR: {"request_id": request_id}}
            log.error("fault injection: the next step is slow", extra=fields)
            self._slow_next = True

    def before_step(self) -> None:
        if self.slow_on:  # slow layers for this step only
            progress.hook = self._slow_layer if self._slow_next else None
            self._slow_next = False
        if self._stall_next:
            self._stall_next = False
            log.error("fault injection: this step sleeps %.0f s", self.stall_s)
            time.sleep(self.stall_s)

    def _slow_layer(self) -> None:
        time.sleep(self.slow_layer_s)
