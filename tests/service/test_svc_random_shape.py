"""A worker serving random weights of a named shape (`--random-shape`, for benchmarks): it
registers as `random-SHAPE` and streams the same tokens as that engine offline."""

from __future__ import annotations

from dllmserve.client import Canvas, Client, Completed, StepUpdate
from dllmserve.engine.engine import Engine
from dllmserve.sampling_params import SamplingParams

SP = {"gen_length": 16, "steps": 8, "block_length": 8, "stop_at_eos": False, "seed": 2}


def test_random_shape_worker_serves_the_shapes_engine(make_cluster):
    c = make_cluster()
    c.add_scheduler()
    c.add_worker("--random-shape", "tiny")
    eng = Engine.from_random_shape("tiny", device="cpu", num_cache_pages=256)
    with Client(c.target) as cl:
        info = cl.server_info()
        assert [(m.name, m.workers) for m in info.models] == [("random-tiny", 1)]
        for prompt in ({"prompt": "Hello there"}, {"token_ids": list(range(1, 129))}):
            canvas, done = Canvas(), None
            for ev in cl.generate(**prompt, sampling_params=SP, model="random-tiny"):
                if isinstance(ev, StepUpdate):
                    canvas.apply(ev)
                elif isinstance(ev, Completed):
                    done = ev
            rid = f"offline-{len(prompt)}-{next(iter(prompt))}"
            eng.add_request(rid, next(iter(prompt.values())), SamplingParams(**SP))
            while eng.has_unfinished():
                ref = [u.output for u in eng.step() if u.finished]
            assert list(done.token_ids) == ref[0].token_ids == canvas.token_ids(16)
            assert done.usage.steps == 8 and done.text == ref[0].text
