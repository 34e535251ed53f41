"""The dashboard in a real browser against a real ``flowmill serve``.

Jobs are submitted through the REST API (as a script or another user would) while a
dashboard is open: what the page shows must follow live, without a reload. Steering
(hold, params, resume, cancel, retry) is done through the page as an operator; a viewer
gets no controls at all.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import wait_until

FLOW_ID = "e2e-delay"
FLOW: dict[str, Any] = {
    "format": "flowmill/1",
    "id": FLOW_ID,
    "name": "E2E delay and write",
    "params": {
        "label": {"type": "string", "default": "x", "title": "Label"},
        "seconds": {"type": "number", "default": 2, "title": "Delay"},
    },
    "nodes": [
        {"id": "start", "type": "trigger.manual", "config": {}},
        {"id": "wait", "type": "util.delay", "config": {"seconds": "${seconds}"}},
        {
            "id": "store",
            "type": "sql.write",
            "config": {
                "url": "sqlite:///${data_dir}/e2e.db",
                "table": "labels",
                "create_table": True,
            },
        },
    ],
    "edges": [
        {"source": "start", "source_port": "out", "target": "wait", "target_port": "in"},
        {"source": "wait", "source_port": "out", "target": "store", "target_port": "in"},
    ],
}


@pytest.fixture(scope="module")
def flow(server: Any) -> str:
    """The test flow on the server (created once per server)."""
    http = server.api("editor")
    reply = http.post(f"{server.url}/api/flows", json={"flow": FLOW})
    assert reply.status_code in (201, 409), reply.text
    return FLOW_ID


def submit(server: Any, user: str = "editor", *, delay_s: float = 0, **params: Any) -> dict:
    body: dict[str, Any] = {"params": params}
    if delay_s:
        body["not_before"] = (datetime.now(UTC) + timedelta(seconds=delay_s)).isoformat()
    reply = server.api(user).post(f"{server.url}/api/flows/{FLOW_ID}/run", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def job_state(server: Any, job_id: int) -> dict:
    return server.api("admin").get(f"{server.url}/api/jobs/{job_id}").json()


def open_dashboard(login_as: Any, user: str, tab: str = "jobs") -> Page:
    page = login_as(user)
    page.wait_for_selector("#dashboard.ready")
    if tab != "jobs":
        page.click(f"#tab-{tab}")
    # a marker that a reload would wipe out
    page.evaluate("window.__noReload = 1")
    return page


def row(job_id: int) -> str:
    return f'#jobs-table tr[data-job-id="{job_id}"]'


def no_errors(page: Page) -> None:
    errors = list(page.errors)
    assert not errors, errors


def screenshot(page: Page, path: Path) -> None:
    """A screenshot without the notices of earlier steps in the corner."""
    page.evaluate("document.querySelectorAll('#toasts .toast').forEach(t => t.remove())")
    page.mouse.move(0, 0)
    page.screenshot(path=str(path))


def test_a_submitted_job_appears_and_changes_state_live(
    login_as: Any, server: Any, flow: str
) -> None:
    page = open_dashboard(login_as, "operator")
    done = submit(server, label="earlier", seconds=0.1)
    # due in 8 s, then 5 s in the delay node: every state stays on screen long enough to be
    # seen, even when the machine is busy
    job = submit(server, delay_s=8, label="live", seconds=5)
    state = page.locator(f"{row(job['id'])} .job-state")
    expect(state).to_have_text("queued")
    expect(page.locator(f"{row(job['id'])} .job-progress")).to_contain_text("not before")
    expect(state).to_have_text("running")
    # per-node progress: the node that runs now, and a duration that ticks
    progress = page.locator(f"{row(job['id'])} .job-progress")
    expect(progress).to_contain_text("wait")
    duration = page.locator(f"{row(job['id'])} .job-duration")
    first = duration.inner_text()
    expect(duration).not_to_have_text(first)  # the duration of a running job ticks
    expect(state).to_have_text("succeeded")
    expect(duration).to_have_text(re.compile(r"^\d+(\.\d)? s$"))
    # the earlier job is there as well, and the page was never reloaded
    expect(page.locator(f"{row(done['id'])} .job-state")).to_have_text("succeeded")
    assert page.evaluate("window.__noReload") == 1
    # newest first
    ids = [
        int(x)
        for x in page.locator("#jobs-table tr[data-job-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)"
        )
    ]
    assert ids == sorted(ids, reverse=True)
    # the state chips count with the events
    expect(page.locator('#state-chips .chip[data-state="succeeded"] .chip-n')).not_to_have_text("0")
    no_errors(page)


def test_filters_narrow_the_table_and_new_jobs_respect_them(
    login_as: Any, server: Any, flow: str
) -> None:
    page = open_dashboard(login_as, "viewer")
    waiting = submit(server, delay_s=3600, label="filter-me", seconds=0.1)
    expect(page.locator(row(waiting["id"]))).to_be_visible()
    page.select_option("#filter-state", "queued")
    expect(page.locator("#jobs-table tr[data-job-id]")).not_to_have_count(0)
    for state in page.locator("#jobs-table tr[data-job-id] .job-state").all_inner_texts():
        assert state == "queued"
    # a job that finishes leaves the "queued" view live
    quick = submit(server, label="quick", seconds=0.1)
    wait_until(lambda: job_state(server, quick["id"])["state"] == "succeeded", what="quick job")
    expect(page.locator(row(quick["id"]))).to_have_count(0)
    # text filter: by param value
    page.select_option("#filter-state", "")
    page.fill("#filter-text", "filter-me")
    expect(page.locator("#jobs-table tr[data-job-id]")).to_have_count(1)
    expect(page.locator(row(waiting["id"]))).to_be_visible()
    page.fill("#filter-text", "no job has this text")
    expect(page.locator("#jobs-table tr.empty")).to_contain_text("No jobs match")
    page.fill("#filter-text", "")
    expect(page.locator(row(quick["id"]))).to_be_visible()
    # clean up: the waiting job would sit in the queue of later tests
    server.api("operator").post(f"{server.url}/api/jobs/{waiting['id']}/cancel")
    no_errors(page)


def test_operator_holds_edits_resumes_cancels_and_retries(
    login_as: Any, server: Any, flow: str
) -> None:
    page = open_dashboard(login_as, "operator")
    job = submit(server, delay_s=3600, label="before", seconds=0.2)
    line = row(job["id"])
    state = page.locator(f"{line} .job-state")
    expect(state).to_have_text("queued")
    # queued: hold, params and cancel; nothing that does not fit the state
    actions = page.locator(f"{line} [data-action]")
    expect(actions).to_have_count(3)
    assert sorted(actions.evaluate_all("bs => bs.map(b => b.dataset.action)")) == [
        "cancel",
        "edit",
        "hold",
    ]
    page.click(f'{line} [data-action="hold"]')
    expect(state).to_have_text("held")
    expect(page.locator(f'{line} [data-action="resume"]')).to_be_visible()
    assert job_state(server, job["id"])["state"] == "held"

    # edit params from the detail panel
    page.click(f"{line} td.job-flow")
    detail = page.locator("#job-detail")
    expect(detail).to_be_visible()
    expect(detail.locator(".job-state")).to_have_text("held")
    detail.locator('[data-action="edit"]').click()
    dialog = page.locator("#dialog")
    expect(dialog).to_be_visible()
    dialog.locator('input[data-param="label"]').fill("after")
    dialog.locator("#dialog-ok").click()
    expect(dialog).to_be_hidden()
    expect(detail.locator('#job-params tr[data-param="label"] td')).to_have_text("after")
    assert job_state(server, job["id"])["params"]["label"] == "after"

    page.click(f'{line} [data-action="resume"]')
    expect(state).to_have_text("queued")
    assert job_state(server, job["id"])["state"] == "queued"

    # cancel asks first; "keep it" keeps it
    page.click(f'{line} [data-action="cancel"]')
    expect(dialog).to_contain_text(f"Cancel job #{job['id']}?")
    page.click("#dialog-cancel")
    expect(dialog).to_be_hidden()
    assert job_state(server, job["id"])["state"] == "queued"
    page.click(f'{line} [data-action="cancel"]')
    page.click("#dialog-ok")
    expect(state).to_have_text("cancelled")
    expect(page.locator(f"{line} [data-action]")).to_have_count(1)  # retry only

    # retry queues it again now: it runs with the edited params
    page.click(f'{line} [data-action="retry"]')
    expect(state).to_have_text("succeeded")
    assert job_state(server, job["id"])["params"]["label"] == "after"
    assert page.evaluate("window.__noReload") == 1
    no_errors(page)


def test_an_api_error_is_shown_and_the_row_recovers(login_as: Any, server: Any, flow: str) -> None:
    page = open_dashboard(login_as, "operator")
    job = submit(server, delay_s=3600, label="conflict", seconds=0.1)
    line = row(job["id"])
    expect(page.locator(f"{line} .job-state")).to_have_text("queued")
    # someone else cancels it, but this page has not heard of it yet: the server says no
    page.route(
        re.compile(rf".*/api/jobs/{job['id']}/hold$"),
        lambda route: route.fulfill(
            status=409,
            content_type="application/json",
            body=f'{{"error": "job {job["id"]} is cancelled; only queued jobs can be held",'
            ' "details": []}',
        ),
    )
    page.click(f'{line} [data-action="hold"]')
    expect(page.locator("#toasts .toast.error")).to_contain_text("only queued jobs can be held")
    server.api("operator").post(f"{server.url}/api/jobs/{job['id']}/cancel")
    expect(page.locator(f"{line} .job-state")).to_have_text("cancelled")
    page.unroute(re.compile(rf".*/api/jobs/{job['id']}/hold$"))
    page.errors.clear()  # the browser logs the refused request itself


def test_viewer_sees_no_controls(login_as: Any, server: Any, flow: str) -> None:
    waiting = submit(server, delay_s=3600, label="viewer", seconds=0.1)
    page = open_dashboard(login_as, "viewer")
    expect(page.locator(row(waiting["id"]))).to_be_visible()
    expect(page.locator("#run-flow")).to_be_hidden()
    assert page.locator("[data-action]").count() == 0
    page.click(f"{row(waiting['id'])} td.job-flow")
    expect(page.locator("#job-detail .job-state")).to_have_text("queued")
    assert page.locator("#job-detail [data-action], #detail-edit-params").count() == 0
    for tab, button in (
        ("schedules", "#new-schedule"),
        ("calendars", "#new-calendar"),
        ("conditions", "#new-condition"),
    ):
        page.click(f"#tab-{tab}")
        expect(page.locator(f"#panel-{tab}")).to_be_visible()
        expect(page.locator(button)).to_be_hidden()
    assert page.locator("[data-action]").count() == 0
    # the API agrees
    reply = server.api("viewer").post(f"{server.url}/api/jobs/{waiting['id']}/hold")
    assert reply.status_code == 403
    server.api("operator").post(f"{server.url}/api/jobs/{waiting['id']}/cancel")
    no_errors(page)


def test_run_flow_from_the_dashboard(login_as: Any, server: Any, flow: str) -> None:
    page = open_dashboard(login_as, "operator")
    page.click("#run-flow")
    dialog = page.locator("#dialog")
    expect(dialog).to_be_visible()
    page.select_option("#run-flow-select", FLOW_ID)
    dialog.locator('input[data-param="label"]').fill("from the page")
    dialog.locator('input[data-param="seconds"]').fill("0.3")
    # a bad value is refused with the server's message, the dialog stays open
    dialog.locator('input[name="max_delay"]').fill("5 parsecs")
    dialog.locator("#dialog-ok").click()
    expect(dialog.locator(".dialog-error")).to_contain_text("max_delay")
    page.errors.clear()  # the browser logs the refused request itself
    dialog.locator('input[name="max_delay"]').fill("")
    dialog.locator("#dialog-ok").click()
    expect(dialog).to_be_hidden()
    detail = page.locator("#job-detail")
    expect(detail.locator(".job-state")).to_have_text("succeeded")
    expect(detail.locator('#job-params tr[data-param="label"] td')).to_have_text("from the page")
    job_id = int(detail.locator("h2").inner_text().lstrip("Job #"))
    assert job_state(server, job_id)["params"] == {"label": "from the page", "seconds": 0.3}
    no_errors(page)


def test_detail_shows_nodes_and_a_live_log_tail(
    login_as: Any, server: Any, flow: str, screenshots: Path
) -> None:
    page = open_dashboard(login_as, "operator")
    job = submit(server, delay_s=2, label="logged", seconds=1.5)
    page.click(f"{row(job['id'])} td.job-flow")
    detail = page.locator("#job-detail")
    log = page.locator("#job-log")
    # before it starts: the submission is logged, the nodes are pending
    expect(log).to_contain_text("submitted")
    expect(detail.locator('#job-nodes tr[data-node-id="store"] .node-state')).to_have_text(
        "pending"
    )
    # while it runs the node states follow the events
    expect(detail.locator('#job-nodes tr[data-node-id="wait"] .node-state')).to_have_text(
        "running"
    )
    expect(detail.locator('#job-nodes tr[data-node-id="start"] .node-state')).to_have_text(
        "succeeded"
    )
    # the writer's lines arrive in the tail as they are written
    expect(log).to_contain_text("writing to table labels")
    expect(log).to_contain_text("1 inserted")
    expect(detail.locator(".job-state")).to_have_text("succeeded")
    expect(log).to_contain_text("succeeded")
    expect(detail.locator('#job-nodes tr[data-node-id="store"] .node-records')).to_have_text("1")
    # the log is in time order and scrolled to its end
    lines = log.locator(".log-line .log-msg").all_inner_texts()
    assert lines[0].startswith("submitted")
    at_end = log.evaluate("b => b.scrollTop + b.clientHeight >= b.scrollHeight - 10")
    assert at_end
    screenshot(page, screenshots / "dashboard-detail.png")
    no_errors(page)


def test_failed_job_shows_node_and_message(login_as: Any, server: Any) -> None:
    http = server.api("editor")
    broken = {
        **FLOW,
        "id": "e2e-broken",
        "name": "E2E broken writer",
        "nodes": [
            FLOW["nodes"][0],
            {"id": "wait", "type": "util.delay", "config": {"seconds": 0.1}},
            {
                "id": "store",
                "type": "sql.write",
                # a table that does not exist and may not be created
                "config": {"url": "sqlite:///${data_dir}/e2e.db", "table": "missing_table"},
            },
        ],
    }
    reply = http.post(f"{server.url}/api/flows", json={"flow": broken})
    assert reply.status_code in (201, 409), reply.text
    page = open_dashboard(login_as, "operator")
    job = http.post(f"{server.url}/api/flows/e2e-broken/run", json={}).json()
    line = row(job["id"])
    expect(page.locator(f"{line} .job-state")).to_have_text("failed")
    expect(page.locator(f"{line} .job-progress")).to_contain_text("store")
    expect(page.locator(f'{line} [data-action="retry"]')).to_be_visible()
    page.click(f"{line} td.job-flow")
    error = page.locator("#job-detail .detail-error")
    expect(error).to_contain_text("store")
    expect(error).to_contain_text("missing_table")
    expect(page.locator('#job-nodes tr[data-node-id="store"] .node-state')).to_have_text("failed")
    expect(page.locator("#alarms")).to_contain_text("did not succeed")
    no_errors(page)


def test_what_happened_while_offline_is_fetched_on_reconnect(
    login_as: Any, server: Any, flow: str
) -> None:
    page = open_dashboard(login_as, "viewer")
    page.wait_for_selector("#live-state.on")
    page.evaluate("Flowmill.state.socket.disconnect()")
    expect(page.locator("#live-state")).to_have_text("offline")
    job = submit(server, label="while offline", seconds=0.1)
    wait_until(lambda: job_state(server, job["id"])["state"] == "succeeded", what="the job")
    # no events reach a disconnected page; after a while it says so
    expect(page.locator("#alarms")).to_contain_text("disconnected")
    assert page.locator(row(job["id"])).count() == 0
    page.evaluate("Flowmill.state.socket.connect()")
    expect(page.locator(f"{row(job['id'])} .job-state")).to_have_text("succeeded")
    expect(page.locator("#alarms")).not_to_contain_text("disconnected")
    assert page.evaluate("window.__noReload") == 1
    no_errors(page)


def test_overview_of_jobs_in_every_state_and_kill(
    login_as: Any, server: Any, flow: str, screenshots: Path
) -> None:
    page = open_dashboard(login_as, "operator")
    operator = server.api("operator")
    held = submit(server, delay_s=3600, label="month end", seconds=1)
    operator.post(f"{server.url}/api/jobs/{held['id']}/hold")
    later = submit(server, delay_s=7200, label="tonight", seconds=1)
    long = submit(server, label="long", seconds=600)  # killed below
    line = row(long["id"])
    expect(page.locator(f"{line} .job-state")).to_have_text("running")
    expect(page.locator(f"{line} .job-progress .node-now")).to_contain_text("wait")
    expect(page.locator(f"{row(held['id'])} .job-state")).to_have_text("held")
    expect(page.locator(f"{row(later['id'])} .job-state")).to_have_text("queued")
    page.wait_for_timeout(1500)  # let the running duration tick a little
    screenshot(page, screenshots / "dashboard-jobs.png")

    # kill asks first, then the worker stops the run
    page.click(f'{line} [data-action="kill"]')
    expect(page.locator("#dialog")).to_contain_text(f"Kill job #{long['id']}?")
    page.click("#dialog-ok")
    expect(page.locator(f"{line} .job-state")).to_have_text("cancelled")
    assert job_state(server, long["id"])["state"] == "cancelled"
    for waiting in (held, later):
        operator.post(f"{server.url}/api/jobs/{waiting['id']}/cancel")
    no_errors(page)


def test_servers_tab_shows_the_active_server_with_fresh_heartbeats(
    login_as: Any, server: Any, flow: str, screenshots: Path
) -> None:
    page = open_dashboard(login_as, "viewer", tab="servers")
    active = page.locator('#servers tr[data-server-id][data-role="active"]')
    expect(active).to_have_count(1)
    expect(active.locator(".health")).to_have_text("ok")
    age = active.locator(".heartbeat-age")

    def seconds() -> float:
        match = re.match(r"([\d.]+) s ago", age.inner_text())
        assert match, age.inner_text()
        return float(match.group(1))

    # heartbeats keep coming live: the age shown starts again from a fresh heartbeat (a
    # page without live updates would only see it grow)
    oldest = seconds()

    def fresh_heartbeat() -> bool:
        nonlocal oldest
        now = seconds()
        if now < oldest:
            return True
        oldest = now
        return False

    wait_until(fresh_heartbeat, what="a fresh heartbeat on the page", interval=0.2)
    expect(page.locator("#server-cards")).to_contain_text(
        active.locator("td").first.inner_text().split()[0]
    )
    expect(page.locator("#alarms")).not_to_contain_text("heartbeat")
    # a running job shows up under the servers, with its worker and a ticking duration
    job = submit(server, label="on a worker", seconds=15)
    running = page.locator(f'#running-jobs tr[data-job-id="{job["id"]}"]')
    expect(running).to_be_visible()
    expect(running.locator("td").nth(2)).not_to_be_empty()
    expect(active.locator("td").nth(6)).to_have_text("1")  # running, by heartbeat
    screenshot(page, screenshots / "dashboard-servers.png")
    expect(running).to_have_count(0)
    no_errors(page)


def test_schedules_calendars_and_conditions_are_managed_in_the_page(
    login_as: Any, server: Any, flow: str, screenshots: Path
) -> None:
    page = open_dashboard(login_as, "editor", tab="calendars")
    dialog = page.locator("#dialog")

    # a calendar
    page.click("#new-calendar")
    dialog.locator('input[name="name"]').fill("munich")
    dialog.locator('input[name="holidays"]').fill("DE-BY")
    dialog.locator('textarea[name="exclusions"]').fill("2026-12-24\n2026-12-31")
    dialog.locator("#dialog-ok").click()
    expect(dialog).to_be_hidden()
    calendar = page.locator('#calendars tr[data-calendar="munich"]')
    expect(calendar).to_contain_text("DE-BY")
    expect(calendar).to_contain_text("2026-12-24")

    # a time condition using it
    page.click("#tab-conditions")
    page.click("#new-condition")
    dialog.locator('input[name="name"]').fill("office")
    dialog.locator('input[name="workday"]').fill("06:00-20:00")
    dialog.locator('input[name="sunday"]').fill("none")
    dialog.locator('select[name="calendar"]').select_option("munich")
    dialog.locator("#dialog-ok").click()
    expect(dialog).to_be_hidden()
    condition = page.locator('#conditions tr[data-condition="office"]')
    expect(condition).to_contain_text("06:00-20:00")
    expect(condition).to_contain_text("closed")
    expect(condition).to_contain_text("munich")
    # edit it
    condition.locator('[data-action="edit-condition"]').click()
    expect(dialog.locator('input[name="name"]')).to_have_attribute("readonly", "")
    dialog.locator('input[name="saturday"]').fill("08:00-12:00")
    dialog.locator("#dialog-ok").click()
    expect(condition).to_contain_text("08:00-12:00")

    # a schedule: a wrong cron is refused with the server's words
    page.click("#tab-schedules")
    page.click("#new-schedule")
    dialog.locator('input[name="name"]').fill("nightly")
    dialog.locator('select[name="flow"]').select_option(FLOW_ID)
    dialog.locator('input[name="cron"]').fill("61 * * * *")
    dialog.locator("#dialog-ok").click()
    expect(dialog.locator(".dialog-error")).to_contain_text("cron")
    expect(dialog.locator('input[name="cron"]')).to_have_class(re.compile("invalid"))
    page.errors.clear()  # the browser logs the refused request itself
    dialog.locator('input[name="cron"]').fill("0 7 * * 1-5")
    dialog.locator('input[name="calendar"]').fill("munich")
    dialog.locator('select[name="condition"]').select_option("office")
    dialog.locator('input[data-param="label"]').fill("scheduled")
    dialog.locator("#dialog-ok").click()
    expect(dialog).to_be_hidden()
    nightly = page.locator('#schedules tr[data-schedule="nightly"]')
    expect(nightly).to_contain_text("0 7 * * 1-5")
    expect(nightly.locator(".next-fire")).to_have_count(3)
    expect(nightly.locator(".next-fire").first).to_contain_text("07:00")
    expect(nightly).to_contain_text("+2 more")
    saved = server.api("viewer").get(f"{server.url}/api/schedules").json()
    mine = next(s for s in saved if s["name"] == "nightly")
    assert mine["spec"]["condition"] == "office" and mine["params"] == {"label": "scheduled"}

    # an interval schedule, edited and then deleted
    page.click("#new-schedule")
    dialog.locator('input[name="name"]').fill("often")
    dialog.locator('select[name="flow"]').select_option(FLOW_ID)
    dialog.locator('select[name="kind"]').select_option("every")
    dialog.locator('input[name="every"]').fill("15m")
    dialog.locator("#dialog-ok").click()
    often = page.locator('#schedules tr[data-schedule="often"]')
    expect(often).to_contain_text("every 15m")
    expect(often.locator(".next-fire")).to_have_count(3)
    often.locator('[data-action="edit-schedule"]').click()
    dialog.locator('input[name="every"]').fill("2h")
    dialog.locator("#dialog-ok").click()
    expect(often).to_contain_text("every 2h")
    screenshot(page, screenshots / "dashboard-schedules.png")
    often.locator('[data-action="delete-schedule"]').click()
    expect(dialog).to_contain_text("Delete schedule often?")
    page.click("#dialog-ok")
    expect(often).to_have_count(0)
    names = {s["name"] for s in server.api("viewer").get(f"{server.url}/api/schedules").json()}
    assert "often" not in names and "nightly" in names
    no_errors(page)


def test_servers_tab_shows_the_file_servers_and_the_trigger_listeners(
    login_as: Any, server: Any, screenshots: Path
) -> None:
    from tests.e2e.conftest import free_port

    port = free_port()
    flow = {
        "format": "flowmill/1",
        "id": "e2e-ticker",
        "nodes": [
            {"id": "tcp", "type": "trigger.tcp", "config": {"port": port}},
            {"id": "wait", "type": "util.delay", "config": {"seconds": 0}},
        ],
        "edges": [{"source": "tcp", "source_port": "out", "target": "wait", "target_port": "in"}],
    }
    saved = server.api("editor").post(f"{server.url}/api/flows", json={"flow": flow})
    assert saved.status_code in (200, 201), saved.text
    page = open_dashboard(login_as, "viewer", tab="servers")
    expect(page.locator('#file-servers tr[data-file-server="ftps"]')).to_contain_text(
        "running"
    )
    expect(page.locator('#file-servers tr[data-file-server="webdav"]')).to_contain_text("running")
    listener = page.locator('#listeners tr[data-listener="e2e-ticker/tcp"]')
    def listening() -> bool:
        # the server writes its status every 2 s; the tab reloads on a click
        page.click("#tab-jobs")
        page.click("#tab-servers")
        return bool(listener.count()) and listener.get_attribute("data-state") == "listening"

    wait_until(listening, what="the listener on the servers tab", interval=0.5)
    expect(listener).to_have_attribute("data-state", "listening")
    expect(listener.locator("td").nth(3)).to_have_text("listening")
    expect(listener).to_contain_text("trigger.tcp")
    screenshot(page, screenshots / "dashboard-listeners.png")
    server.api("editor").delete(f"{server.url}/api/flows/e2e-ticker")
