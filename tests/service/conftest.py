"""Fixtures of the service tests, shared by every module: a real redis-server per test module
(on a free port, in a temp dir) and a client of it, real scheduler and worker processes
(`svc_util.Cluster`, whose redis-server keeps an AOF), real gRPC over loopback, and a tiny
random checkpoint in the real Hugging Face layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("grpc")
pytest.importorskip("redis")

from svc_util import Cluster  # noqa: E402

from dllmserve.broker import redis_keys as rk  # noqa: E402
from dllmserve.scheduler.local_redis import LocalRedis, find_redis_server  # noqa: E402

if find_redis_server() is None:
    from dllmserve.scheduler.local_redis import INSTALL_HINT

    if os.environ.get("CI"):  # CI must run them: a missing server is an error there
        raise RuntimeError(f"the service tests need redis-server: {INSTALL_HINT}")
    pytest.skip(f"the service tests need redis-server: {INSTALL_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def rserver(tmp_path_factory):
    """A redis-server of the test module's own (no AOF: nothing here restarts it)."""
    srv = LocalRedis(tmp_path_factory.mktemp("redis"), aof=False).start()
    yield srv
    srv.stop(kill=True)


@pytest.fixture
def r(rserver):
    """A client of `rserver`, emptied, with the dispatch group a scheduler creates at start."""
    import redis

    c = redis.Redis.from_url(rserver.url)
    c.flushall()
    c.xgroup_create(rk.PENDING, rk.DISPATCH_GROUP, id="0", mkstream=True)
    yield c
    c.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from dllmserve.testing.tiny_models import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-llada", arch="llada")


@pytest.fixture
def make_cluster(tmp_path, tiny_model):
    made: list[Cluster] = []

    def make() -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", tiny_model)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, tiny_model):
    """A shared service: one scheduler and two CPU workers, for the end-to-end tests."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), tiny_model)
    try:
        c.add_scheduler()
        p1 = c.add_worker(wait=False)
        p2 = c.add_worker(wait=False)
        c.wait_worker(p1)
        c.wait_worker(p2)
        yield c
    finally:
        c.close()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "load: the 200-stream load test (runs in CI; deselect with -m 'not load')"
    )
