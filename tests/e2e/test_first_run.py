"""A new user's first run, in a browser: ``scripts/quickstart`` (demo data, samples), log
in with the printed password, see the scheduled samples on the dashboard, open
``sales-import`` in the editor, press Run and see it succeed.

The screenshots of this test are the ones in docs/getting-started.md (copied from
build/screenshots/first-run-*.png).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import Quickstart, quickstart
from tests.e2e.conftest import PAGE_DEADLINE_MS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Quickstart]:
    with quickstart(tmp_path) as running:
        yield running


def test_a_new_user_runs_sales_import_from_the_editor(
    started: Quickstart, browser: Any, screenshots: Path
) -> None:
    url, password = started.url, started.password
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(PAGE_DEADLINE_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/")
    page.fill("#login-name", "admin")
    page.fill("#login-password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/dashboard")

    # the scheduled samples with their next run times
    page.click("#tab-schedules")
    rows = page.locator("#schedules tbody tr")
    expect(rows.filter(has_text="nightly-prices")).to_have_count(1)
    expect(rows.filter(has_text="nightly-prices")).to_contain_text("02:00")
    expect(rows.filter(has_text="order-status-report")).to_have_count(1)
    page.screenshot(path=str(screenshots / "first-run-schedules.png"))

    # open sales-import in the editor and run it with its defaults
    page.goto(f"{url}/editor")
    page.wait_for_selector('#flow-open option[value="sales-import"]', state="attached")
    page.select_option("#flow-open", "sales-import")
    expect(page.locator(".drawflow-node")).not_to_have_count(0)
    expect(page.locator("#flow-id")).to_have_value("sales-import")
    page.click("#btn-run")
    expect(page.locator("#run-dialog")).to_be_visible()
    page.click("#run-start")
    expect(page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    expect(page.locator(".drawflow-node.state-succeeded")).not_to_have_count(0)
    page.screenshot(path=str(screenshots / "first-run-editor.png"))

    # the dashboard shows the job that ran
    page.goto(f"{url}/dashboard")
    job = page.locator("#jobs-table tr[data-job-id]").filter(has_text="sales-import")
    expect(job.first).to_contain_text("succeeded")
    page.screenshot(path=str(screenshots / "first-run-dashboard.png"))
    assert errors == []
    context.close()
