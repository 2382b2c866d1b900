"""The dashboard in real headless Chromium (Debian's package, driven by Playwright).

On the real servers, in the test's own namespace: a run with parallel steps and
a failed run go through a real worker and scheduler, a garbage message is
dead-lettered by the real scheduler, and the page must list the runs, filter
them by status, draw one bar per step (the parallel ones overlapping in time
on separate rows), list the events, show payload markup as text without running
it, and show the dead letter.

Without Chromium this test fails, saying how to install it: a browser test that
quietly skips would hide that the page was never checked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ledgerflow.dashboard.access import Access
from tests.dashboard.conftest import MARKUP, TOKEN, Runs

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    explicit = os.environ.get("LEDGERFLOW_CHROMIUM")
    found = explicit or next(filter(None, map(shutil.which, CHROMIUM_CANDIDATES)), None)
    if not found:
        pytest.fail(
            "the dashboard's browser test needs Chromium and none was found "
            f"(looked for {', '.join(CHROMIUM_CANDIDATES)} on PATH and $LEDGERFLOW_CHROMIUM). "
            "Install Debian's package: `apt-get install -y chromium` (`make test` does it "
            "where apt-get is available).",
            pytrace=False,
        )
    return found


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        pytest.fail(
            f"the browser test needs Playwright ({exc}): pip install -e '.[dev]'", pytrace=False
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # root in a container: Chromium's sandbox cannot start there
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = await context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


async def _ready(page: Any) -> None:
    await page.wait_for_selector("body[data-state=ready]")


async def _snap(page: Any, name: str) -> None:
    """Screenshots for a human, into $LEDGERFLOW_SCREENSHOTS if set."""
    folder = os.environ.get("LEDGERFLOW_SCREENSHOTS")
    if folder:
        await page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


async def _listed(page: Any) -> set[str]:
    ids = await page.eval_on_selector_all(
        "#runs-table tbody tr", "rows => rows.map(r => r.dataset.runId)"
    )
    return set(ids)


async def test_dashboard_in_chromium(
    page: Any, dashboard: str, finished_runs: Runs, garbage_dead_letter: str, backends: Any
) -> None:
    # The runs list shows both runs.
    await page.goto(f"{dashboard}/#/runs")
    await _ready(page)
    assert await _listed(page) == {finished_runs.parallel, finished_runs.failing}
    await _snap(page, "runs")

    # A status filter changes what is listed.
    await page.click("#status-filter button[data-status=failed]")
    await page.wait_for_function(
        "id => !document.querySelector(`#runs-table tr[data-run-id='${id}']`)",
        arg=finished_runs.parallel,
    )
    await _ready(page)
    assert await _listed(page) == {finished_runs.failing}
    await _snap(page, "runs-failed")
    assert "status=failed" in page.url
    assert await page.get_attribute(
        "#status-filter button[data-status=failed]", "aria-pressed"
    ) == ("true")
    await page.click("#status-filter button[data-status=completed]")
    await page.wait_for_selector(f"#runs-table tr[data-run-id='{finished_runs.parallel}']")
    await _ready(page)
    assert await _listed(page) == {finished_runs.parallel}

    # Opening the run draws one bar per step; the gathered ones overlap in time.
    await page.click(f"#runs-table a:text-is('{finished_runs.parallel}')")
    await page.wait_for_selector("#run-view:not([hidden]) .bar")
    await _ready(page)
    assert await page.text_content("#run-id") == finished_runs.parallel
    assert await page.text_content("#run-status") == "completed"
    bars = page.locator(".bar[data-kind=step]")
    assert await bars.count() == 4
    drawn = []
    for i in range(4):
        bar = bars.nth(i)
        box = await bar.bounding_box()
        assert box is not None and box["width"] > 0, f"bar {i} is not drawn"
        drawn.append(
            {
                "id": await bar.get_attribute("data-bar-id"),
                "start": int(await bar.get_attribute("data-start-ms")),
                "end": int(await bar.get_attribute("data-end-ms")),
                "x0": box["x"],
                "x1": box["x"] + box["width"],
                "y": box["y"],
            }
        )
    assert [d["id"] for d in drawn] == ["s1", "s2", "s3", "s4"]
    parallel, last = drawn[:3], drawn[3]
    assert max(d["start"] for d in parallel) < min(d["end"] for d in parallel)
    # ... and on screen: their horizontal extents overlap, each on its own row.
    assert max(d["x0"] for d in parallel) < min(d["x1"] for d in parallel), drawn
    assert len({d["y"] for d in drawn}) == 4, drawn
    # The step after them starts where they have ended.
    assert last["x0"] >= max(d["x1"] for d in parallel) - 1, drawn

    # The events are listed, with their payloads expandable and shown as text.
    events = await backends.store.read(finished_runs.parallel)
    rows = page.locator("#events-table tbody tr")
    assert await rows.count() == len(events)
    assert await page.get_attribute("#events-table tbody tr:last-child", "data-type") == (
        "run_completed"
    )
    last_payload = page.locator("#events-table tbody tr:last-child details")
    await last_payload.locator("summary").click()
    assert json.dumps(MARKUP) in await last_payload.locator("pre").inner_text()
    assert await page.evaluate("window.__xss") is None, "payload markup ran as code"
    await _snap(page, "run")
    assert await page.locator("#run-view img, #run-view script").count() == 0

    # The dead letter is listed, and looking leaves it on the queue.
    await page.click("#nav-dlq")
    await page.wait_for_selector(f"#dlq-table tr[data-message-id='{garbage_dead_letter}']")
    await _ready(page)
    assert await page.text_content("#dlq-depth") == "1"
    await _snap(page, "dlq")
    reason = await page.text_content(
        f"#dlq-table tr[data-message-id='{garbage_dead_letter}'] .reason"
    )
    assert reason is not None and "malformed" in reason
    assert await page.locator("#dlq-view b").count() == 0, "message body markup was rendered"
    assert await backends.broker.queue_depth(backends.names.dead_queue) == 1


async def test_dashboard_with_a_token_in_chromium(
    page: Any, serve_dashboard: Any, finished_runs: Runs, backends: Any
) -> None:
    """The page asks for the token once, keeps it in the tab, and sends it with every call."""
    base = await serve_dashboard(Access(token=TOKEN))
    await page.goto(f"{base}/#/runs")
    await page.wait_for_selector("body[data-state=token] #token-view:not([hidden])")
    assert await page.locator("#token-rejected").is_hidden()
    assert await page.locator("#runs-table tbody tr").count() == 0

    await page.fill("#token-input", "not-the-token")
    await page.click("#token-submit")
    await page.wait_for_selector("body[data-state=token] #token-rejected:not([hidden])")

    await page.fill("#token-input", TOKEN)
    await page.press("#token-input", "Enter")
    await _ready(page)
    assert await _listed(page) == {finished_runs.parallel, finished_runs.failing}
    assert await page.evaluate("Object.values(sessionStorage)") == [TOKEN]
    assert await page.context.cookies() == []

    # The dead-letter view is a POST with the same token; a reload keeps the tab's token.
    await page.click("#nav-dlq")
    await page.wait_for_selector("#dlq-view:not([hidden])")
    await _ready(page)
    assert await page.text_content("#dlq-depth") == "0"
    await page.reload()
    await _ready(page)
    assert await page.locator("#token-view").is_hidden()
