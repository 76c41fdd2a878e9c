"""The playground page in a real headless browser (Debian's chromium, driven by Playwright):
submit a prompt, watch the canvas change across steps, and get the API's answer. The
screenshot is kept as a test artifact (test-artifacts/playground.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from http_util import add_gateway
from svc_util import Cluster

from dllmserve.assets import default_model_path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    if os.environ.get("CI"):  # CI must run it: scripts/test.sh installs chromium
        raise RuntimeError("the playground test needs chromium: apt-get install chromium")
    pytest.skip(
        "the playground test needs chromium (apt-get install chromium)", allow_module_level=True
    )
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("playground"), default_model_path())
    try:
        c.add_scheduler()
        c.add_worker()
        yield add_gateway(c)
    finally:
        c.close()


def test_the_playground_denoises_live_and_shows_the_answer(base):
    from playwright.sync_api import sync_playwright

    prompt, gen, steps = "Repeat exactly: serving diffusion models", 32, 16
    body = {"model": "", "messages": [{"role": "user", "content": prompt}], "max_tokens": gen,
            "steps": steps, "block_length": 32, "temperature": 0, "seed": 0}  # fmt: skip
    want = httpx.post(base + "/v1/chat/completions", json=body, timeout=120).json()
    answer = want["choices"][0]["message"]["content"]
    assert answer
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').options.length >= 2")
            page.fill("#prompt", prompt)
            page.fill("#gen_length", str(gen))
            page.fill("#steps", str(steps))
            page.fill("#block_length", "32")
            page.click("#go")
            page.wait_for_function("document.body.dataset.state !== 'running'", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
            frames = page.evaluate("window.playground.frames")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            assert page.inner_text("#answer") == answer
            assert page.inner_text("#step") == str(steps)
            cells = page.locator("#canvas i")
            assert cells.count() == gen
            # Replay the middle step: earlier, new and masked cells are told apart.
            page.evaluate(
                "(k) => { const r = document.getElementById('replay'); r.value = k;"
                " r.dispatchEvent(new Event('input')); }",
                steps // 2,
            )
            kinds = page.eval_on_selector_all("#canvas i", "els => els.map(e => e.className)")
            assert {"tok new", "tok old", "tok masked"} <= set(kinds)
            page.screenshot(path=str(ARTIFACTS / "playground-mid.png"), full_page=True)
        finally:
            browser.close()
    # One frame per step, each committing something, the masks running out at the end.
    assert [f["step"] for f in frames] == list(range(1, steps + 1))
    masked = [f["masked"] for f in frames]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0 and masked[0] < gen
    shown = [tuple(c["kind"] for c in f["cells"]) for f in frames]
    assert len(set(shown)) == steps, "the canvas changes at every step"


def test_an_early_stop_at_eos_is_said_so(base):
    """The page's defaults (64 tokens, 32 steps, blocks of 32) on its default prompt: the
    answer ends in the first block, so the request stops at EOS after 16 of 32 steps."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').options.length >= 2")
            page.click("#go")
            page.wait_for_function("document.body.dataset.state !== 'running'", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
            frames = page.evaluate("window.playground.frames")
            ended = page.inner_text("#ended")
        finally:
            browser.close()
    assert frames[-1]["step"] == 16 and frames[-1]["masked"] == 0
    assert ended == "stopped early at EOS (16 of 32 steps)"


def test_provisional_tokens_show_faint_in_masked_cells(base):
    """With the toggle on, each step's masked cells show the proposed token, fainter than the
    committed ones; the last step leaves none."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').options.length >= 2")
            page.fill("#gen_length", "32")
            page.fill("#steps", "16")
            page.check("#provisional")
            page.click("#go")
            page.wait_for_function("document.body.dataset.state !== 'running'", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
            frames = page.evaluate("window.playground.frames")
            page.evaluate(
                "() => { const r = document.getElementById('replay'); r.value = 1;"
                " r.dispatchEvent(new Event('input')); }"
            )
            faint = page.eval_on_selector_all(
                "#canvas i.provisional",
                "els => els.map(e => [e.textContent, Number(getComputedStyle(e).opacity)])",
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground-provisional.png"), full_page=True)
        finally:
            browser.close()
    # Step 1 of one block of 32 committing 2: the 30 other cells are faint proposals.
    first = [c["kind"] for c in frames[0]["cells"]]
    assert first.count("new") == 2 and first.count("provisional") == 30
    assert len(faint) == 30 and all(0 < opacity < 1 for _, opacity in faint)
    assert all(text for text, _ in faint)
    assert "provisional" not in {c["kind"] for c in frames[-1]["cells"]}
