"""The playground on a tiny LLaDA2 checkpoint in a real headless browser: with an editing
threshold (LLaDA2.1), cells a step edited are shown as such, and the canvas ends as the API's
answer. Needs chromium, like tests/service/test_http_playground.py."""

from __future__ import annotations

import shutil

import httpx
import pytest
from http_util import add_gateway
from svc_util import Cluster

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("the playground test needs chromium", allow_module_level=True)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from dllmserve.testing.tiny_llada2 import write_tiny_llada2

    root = tmp_path_factory.mktemp("playground-llada2")
    c = Cluster(root / "svc", write_tiny_llada2(root / "tiny-llada2", seed=3, logit_scale=12.0))
    try:
        c.add_scheduler()
        c.add_worker()
        yield add_gateway(c)
    finally:
        c.close()


def test_edited_cells_are_shown(base):
    from playwright.sync_api import sync_playwright

    body = {"model": "", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 16,
            "steps": 16, "block_length": 4, "temperature": 0, "seed": 0,
            "editing_threshold": 0.3}  # fmt: skip
    want = httpx.post(base + "/v1/chat/completions", json=body, timeout=120).json()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').options.length >= 2")
            page.fill("#prompt", "Hi there")
            page.fill("#gen_length", "16")
            page.fill("#steps", "16")
            page.fill("#block_length", "4")
            page.fill("#editing_threshold", "0.3")
            page.click("#go")
            page.wait_for_function("document.body.dataset.state !== 'running'", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
            frames = page.evaluate("window.playground.frames")
            answer = page.inner_text("#answer")
        finally:
            browser.close()
    edited = [c for f in frames for c in f["cells"] if c["kind"] == "edited"]
    assert edited and all("was" in c for c in edited)
    assert answer == want["choices"][0]["message"]["content"]
