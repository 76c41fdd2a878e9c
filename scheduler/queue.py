"""Transitional: the worker's loop still registers the scripts positionally through here until it
moves onto `dllmserve.broker.scripts.Broker`. New code imports `dllmserve.broker`."""

from __future__ import annotations

from types import SimpleNamespace

from dllmserve.broker import lua
from dllmserve.broker.redis_keys import *  # noqa: F403
from dllmserve.broker.redis_keys import text as s  # noqa: F401


def register_scripts(client) -> SimpleNamespace:
    return SimpleNamespace(
        start=client.register_script(lua.START),
        finish=client.register_script(lua.FINISH),
        reclaim=client.register_script(lua.RECLAIM),
        publish_steps=client.register_script(lua.PUBLISH_STEPS),
    )
