"""Two models behind one scheduler (LLaDA and Dream workers): routing by model name. This
service's Redis wants a password (given in the Redis URL of the scheduler and workers)."""

from __future__ import annotations

import grpc
import pytest

from dllmserve.client import Canvas, Client, Completed, StepUpdate

SP = {"gen_length": 16, "steps": 8, "seed": 4}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model):
    from svc_util import Cluster

    from dllmserve.testing.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("models2")
    dream = write_tiny_checkpoint(root / "tiny-dream", arch="dream", seed=3)
    c = Cluster(root / "svc", tiny_model, redis_password="pa55word")
    assert c.url.startswith("redis://:pa55word@")
    try:
        c.add_scheduler()
        c.llada = c.add_worker("--model-name", "llada-tiny", wait=False)
        c.dream = c.add_worker("--model", str(dream), "--model-name", "dream-tiny", wait=False)
        c.wait_worker(c.llada)
        c.wait_worker(c.dream)
        yield c
    finally:
        c.close()


def test_requests_go_to_the_workers_of_their_model(two_models):
    c = two_models
    with Client(c.target) as cl:
        info = cl.server_info()
        assert sorted((m.name, m.workers) for m in info.models) == [
            ("dream-tiny", 1),
            ("llada-tiny", 1),
        ]
        for model, worker in (("llada-tiny", c.llada), ("dream-tiny", c.dream)):
            for _ in range(2):
                canvas, done = Canvas(), None
                for ev in cl.generate(messages=[{"role": "user", "content": "Hi"}], model=model,
                                      sampling_params=SP, sparse_config={}):  # fmt: skip
                    if isinstance(ev, StepUpdate):
                        canvas.apply(ev)
                    elif isinstance(ev, Completed):
                        done = ev
                assert done.worker_id == worker.worker_id, model
                assert canvas.token_ids(16) == list(done.token_ids)
        # With several models served, a request must name one.
        with pytest.raises(grpc.RpcError) as e:
            cl.generate_text("Hi", sampling_params=SP, reattach=False)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("model:")
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError):  # the password is enforced
        redis.Redis(port=c.redis.port).ping()
