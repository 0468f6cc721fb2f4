"""The demo page, clicked through in a real headless Chromium (Debian's) driven by Playwright.

The screenshot lands in $TEST_ARTIFACTS_DIR (default: test-artifacts/) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip extra: browser)")
# slow: a real server process and a headless browser.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None,
                                 reason="Debian's chromium is not installed (apt-get install chromium)")]

# The machine has no network: keep Chromium from trying to reach Google's services.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_server(tiny_adapter_dir, tmp_path_factory):
    with running_server(tiny_adapter_dir, tmp_path_factory.mktemp("demo"), {"MAX_BATCH_DELAY_MS": "5"}) as server:
        yield server


def test_demo_page_summarizes_and_shows_batching_stats(demo_server):
    artifacts = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(demo_server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('adapter')")
            assert page.is_visible("#dev-banner"), "a random dev model must be labelled as such"
            page.fill("#dialogue", "#Person1#: Could you help me move the sofa on Saturday?\n"
                                   "#Person2#: Sure, but only after my football match.")
            page.fill("#max_new_tokens", "12")
            page.fill("#min_new_tokens", "12")
            page.click("#summarize")
            page.wait_for_function("!['…', ''].includes(document.getElementById('summary').textContent)")
            summary = page.text_content("#summary")
            assert summary and summary != "…" and "error" not in (page.get_attribute("#summary", "class") or "")
            assert int(page.text_content("#t-batch")) >= 1
            assert page.text_content("#t-compute").endswith("ms")
            page.wait_for_function("Number(document.getElementById('s-batches').textContent) >= 1")
            assert page.text_content("#s-status") == "ready"

            # The same summary as the API gives: the page shows what the endpoint returns.
            api = httpx.post(demo_server.url + "/invocations", json={
                "inputs": page.input_value("#dialogue"),
                "parameters": {"max_new_tokens": 12, "min_new_tokens": 12, "num_beams": 1, "do_sample": False,
                               "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}}).json()
            assert api["summaries"][0] == summary

            page.screenshot(path=str(artifacts / "demo-page.png"), full_page=True)

            # A bad parameter shows the server's own error message, not a broken page.
            page.fill("#num_beams", "99")
            page.click("#summarize")
            page.wait_for_selector("#summary.error")
            assert "num_beams" in page.text_content("#summary")
            assert page.text_content("#t-batch") == "–", "no stale batch figures next to an error"
        finally:
            browser.close()
    assert (artifacts / "demo-page.png").stat().st_size > 10_000


def test_demo_page_can_be_turned_off(tiny_adapter_dir, tmp_path):
    with running_server(tiny_adapter_dir, tmp_path, {"DEMO_PAGE": "false", "WARMUP": "false"}) as server:
        response = httpx.get(server.url + "/")
        assert response.status_code == 404 and response.json()["error"] == "not_found"
