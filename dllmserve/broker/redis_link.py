"""The service's link to Redis: the one place its clients are built, and what it notices.

- `connect` builds a client from `redis://`, `rediss://` or `unix://` URLs (redis-py's own), or
  from `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`, which
  redis-py does not parse: the client then asks the Sentinels for the current master of
  `service` and follows a failover.
- `Backoff` paces retries while Redis is unreachable (0.5 s doubling to 5 s) and logs warnings
  1, 2, 4, ... up to 60 s apart, not one per retry, and one line when it is back.
- `Epoch` notices lost state: a marker key the schedulers share; a Redis that restarted
  empty, was flushed or failed over to a replica that never had it has no marker (or another
  one), so every stream followed across the loss can be ended at once (scheduler/relay.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions

SENTINEL_SCHEME = "redis+sentinel"
EPOCH_KEY = "dllm:epoch"  # a marker of the state the service knows; gone: the state was lost


@dataclass(frozen=True)
class SentinelURL:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel(url: str) -> SentinelURL:
    """`redis+sentinel://[[user]:password@]host:port[,host:port]/service[/db]`; a ValueError
    that names what is wrong otherwise."""
    parts = urlsplit(url)
    netloc = parts.netloc
    creds, _, hostlist = netloc.rpartition("@")
    user, _, password = creds.partition(":") if creds else ("", "", "")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis URL {SENTINEL_SCHEME}://...: {item!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"redis URL {SENTINEL_SCHEME}://...: the path must be /SERVICE[/DB]")
    return SentinelURL(
        hosts,
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(user) or None,
        unquote(password) or None,
    )


def check_url(url: str) -> None:
    """A ValueError naming what is wrong with a Redis URL, before anything connects."""
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        parse_sentinel(url)
    else:
        redis.connection.parse_url(url)


def connect(url: str, asyncio: bool = False, **kwargs) -> redis.Redis | aioredis.Redis:
    """A client of the service's Redis (synchronous, or asyncio for the scheduler)."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return (aioredis if asyncio else redis).Redis.from_url(url, **kwargs)
    s = parse_sentinel(url)
    auth = {"username": s.username, "password": s.password}
    if asyncio:
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis.sentinel import Sentinel
    sentinel = Sentinel(s.hosts, sentinel_kwargs=auth, **auth)
    return sentinel.master_for(s.service, db=s.db, **kwargs)


class Backoff:
    """Retry pacing and rate-limited warnings for one thing that needs Redis: retries back off
    from `first_s` to `max_s`; warnings from one a second to one every `quiet_s`."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        first_s: float = 0.5,
        max_s: float = 5.0,
        quiet_s: float = 60.0,
    ) -> None:
        self.log, self.what = log, what
        self.first_s, self.max_s, self.quiet_s = first_s, max_s, quiet_s
        self.delay_s = first_s
        self.failures = 0
        self._warn_every = 1.0
        self._next_warning = 0.0

    def failed(self, error: BaseException) -> float:
        """Note a failure; returns how long to wait before the next try."""
        self.failures += 1
        now = time.monotonic()
        if now >= self._next_warning:
            self.log.warning(
                "%s: redis unavailable (%s); %d failed tries so far, retrying",
                self.what,
                error or type(error).__name__,
                self.failures,
            )
            self._next_warning = now + self._warn_every
            self._warn_every = min(self.quiet_s, 2 * self._warn_every)
        wait, self.delay_s = self.delay_s, min(self.max_s, self.delay_s * 2)
        return wait

    def ok(self) -> None:
        if self.failures:
            self.log.info(
                "%s: redis reachable again after %d failed tries", self.what, self.failures
            )
        self.failures, self.delay_s = 0, self.first_s
        self._warn_every, self._next_warning = 1.0, 0.0


class Epoch:
    """The marker of the state this process has seen (asyncio)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self.value: str | None = None

    async def check(self) -> bool:
        """True when the state this process knew is gone (the first call only learns it)."""
        await self._r.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        now = await self._r.get(EPOCH_KEY)
        lost = self.value is not None and now != self.value
        self.value = now
        return lost
