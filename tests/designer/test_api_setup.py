"""The setup part of the REST API (schedules, calendars, time conditions, connections)
and flow import, for every role, plus the promise that no secret ever leaves the server."""

from __future__ import annotations

import io
import json
import re
import threading
from datetime import date, datetime
from pathlib import Path
from typing import Any

import holidays
import pytest

from designer.web.routing import ROUTES
from engine.batch.workers import run_job
from engine.flows.format import dump_flow, load_flow
from engine.run.events import Event
from engine.service import Flowmill
from engine.store.secrets import SecretKeyError

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "csv-to-sql.flow.json"

SCHEDULE = {"name": "nightly", "flow": "csv-to-sql", "cron": "0 7 * * 1-5", "calendar": "DE-BY"}
CALENDAR = {"name": "munich", "holidays": "DE-BY", "exclusions": ["2030-12-24"]}
CONDITION = {"name": "office", "windows": {"workday": "06:00-20:00", "sunday": "none"}}
CONNECTION = {"name": "erp", "settings": {"url": "postgresql+psycopg://erp:pw@db/erp"}}

# (method, path, body) of every write endpoint added here, by the permission it needs
SCHEDULE_WRITES = [
    ("POST", "/api/schedules", SCHEDULE),
    ("POST", "/api/calendars", CALENDAR),
    ("POST", "/api/conditions", CONDITION),
    ("DELETE", "/api/schedules/nightly", None),
]
CONNECTION_WRITES = [
    ("POST", "/api/connections", CONNECTION),
    ("POST", "/api/connections/erp/test", None),
    ("DELETE", "/api/connections/erp", None),
]
READS = ["/api/schedules", "/api/calendars", "/api/conditions", "/api/connections"]


def sample() -> dict[str, Any]:
    return load_flow(SAMPLE)


@pytest.fixture
def flow_on_server(service: Flowmill) -> str:
    service.import_flow(SAMPLE)
    return "csv-to-sql"


# -- who may do what --------------------------------------------------------------------------


def test_every_new_endpoint_needs_a_login(as_role: Any):
    anonymous = as_role(None)
    for path in READS:
        assert anonymous.get(path).status_code == 401, path
    for method, path, body in [
        *SCHEDULE_WRITES,
        *CONNECTION_WRITES,
        ("POST", "/api/flows/import", {"flow": sample()}),
    ]:
        reply = anonymous.send(method, path, body)
        assert reply.status_code == 401, (method, path)
        assert set(reply.json) == {"error", "details"}


@pytest.mark.parametrize(
    ("role", "schedules", "connections", "flows"),
    [
        ("viewer", False, False, False),
        ("operator", False, False, False),
        ("editor", True, False, True),
        ("admin", True, True, True),
    ],
)
def test_roles_on_the_setup_endpoints(
    as_role: Any, flow_on_server: str, role: str, schedules: bool, connections: bool, flows: bool
):
    client = as_role(role)
    for path in READS:
        assert client.get(path).status_code == 200, path
    for writes, allowed in ((SCHEDULE_WRITES, schedules), (CONNECTION_WRITES, connections)):
        for method, path, body in writes:
            reply = client.send(method, path, body)
            if allowed:
                assert reply.status_code in (200, 201), (method, path, reply.json)
            else:
                assert reply.status_code == 403, (method, path)
                assert f"user {role} ({role}) may not" in reply.json["error"]
    imported = client.send("POST", "/api/flows/import", {"flow": sample()})
    assert imported.status_code == (200 if flows else 403)


def test_writes_need_the_csrf_token(as_role: Any, flow_on_server: str):
    admin = as_role("admin")
    for method, path, body in [
        *SCHEDULE_WRITES,
        *CONNECTION_WRITES,
        ("POST", "/api/flows/import", {"flow": sample()}),
    ]:
        reply = admin.send(method, path, body, csrf=False)
        assert reply.status_code == 403, (method, path)
        assert "X-CSRF-Token" in reply.json["error"]
    upload = admin.send(
        "POST", "/api/flows/import", csrf=False, data={"file": (io.BytesIO(b"{}"), "x.json")}
    )
    assert upload.status_code == 403
    assert admin.get("/api/schedules").json == []  # nothing was done


def test_a_bearer_token_needs_no_csrf_token(web: Any, service: Flowmill, flow_on_server: str):
    _, token = service.users.create_token("editor", "deploy script")
    reply = web.test_client().post(
        "/api/schedules", json=SCHEDULE, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 201


# -- schedules --------------------------------------------------------------------------------


def test_schedule_is_created_replaced_listed_with_next_fires_and_removed(
    as_role: Any, flow_on_server: str
):
    editor = as_role("editor")
    created = editor.send("POST", "/api/schedules", {**SCHEDULE, "priority": 3})
    assert created.status_code == 201, created.json
    assert (created.json["name"], created.json["flow"], created.json["priority"]) == (
        "nightly",
        "csv-to-sql",
        3,
    )
    # stored like `flowmill schedules add` stores it: zone and misfire policy explicit
    expected = {"cron": "0 7 * * 1-5", "calendar": "DE-BY"}
    assert created.json["spec"] == {**expected, "tz": "Europe/Berlin", "misfire": "run_once"}

    listed = editor.get("/api/schedules?upcoming=7").json
    assert [s["name"] for s in listed] == ["nightly"]
    fires = [datetime.fromisoformat(t) for t in listed[0]["next_fires"]]
    assert len(fires) == 7 and fires == sorted(fires)
    bavaria = holidays.country_holidays("DE", subdiv="BY")
    for moment in fires:  # on Berlin's clock: 07:00 on workdays that are no holiday
        assert (moment.hour, moment.minute) == (7, 0) and moment.weekday() < 5
        assert moment.date() not in bavaria
        assert moment.utcoffset().total_seconds() in (3600, 7200)
    assert datetime.fromisoformat(listed[0]["next_fire"]) == fires[0]  # what the scheduler does
    assert len(editor.get("/api/schedules").json[0]["next_fires"]) == 5

    replaced = editor.send(
        "POST", "/api/schedules", {"name": "nightly", "flow": "csv-to-sql", "every": "2h"}
    )
    assert replaced.status_code == 200 and replaced.json["spec"]["every"] == "2h"
    assert len(editor.get("/api/schedules").json) == 1

    assert editor.send("DELETE", "/api/schedules/nightly").status_code == 200
    gone = editor.send("DELETE", "/api/schedules/nightly")
    assert gone.status_code == 404 and "nightly" in gone.json["error"]
    assert editor.get("/api/schedules").json == []


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"cron": "0 7 * *"}, 400, "cron"),
        ({"cron": None, "every": "soon"}, 400, "every"),
        ({"tz": "Mars/Olympus"}, 400, "tz"),
        ({"calendar": "XX-YY"}, 400, "calendar"),
        ({"condition": "nope"}, 400, "condition"),
        ({"windows": {"workday": "20:00-06:00"}}, 400, "windows.workday"),
        ({"misfire": "twice"}, 400, "misfire"),
        ({"every": "15m"}, 400, None),  # cron and every
        ({"crom": "0 7 * * *"}, 400, None),  # a typo is refused, not ignored
        ({"priority": 10**30}, 400, "priority"),
        ({"params": {"vat": "viel"}}, 400, "params.vat"),
        ({"name": "a/b"}, 400, None),
        ({"name": "flow:csv-to-sql:tick"}, 400, "name"),
        ({"flow": "nope"}, 404, None),
        # a remote caller must not make the server read its own files
        ({"flow": str(SAMPLE)}, 404, None),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(
    as_role: Any, flow_on_server: str, change: dict[str, Any], status: int, field: str | None
):
    editor = as_role("editor")
    spec = {k: v for k, v in {**SCHEDULE, **change}.items() if v is not None}
    reply = editor.send("POST", "/api/schedules", spec)
    assert reply.status_code == status, reply.json
    assert set(reply.json) == {"error", "details"}
    if field:
        assert field in [d["field"] for d in reply.json["details"]], reply.json
    assert editor.get("/api/schedules").json == []


def test_schedules_armed_by_trigger_nodes_are_left_to_their_flows(as_role: Any, service: Flowmill):
    flow = {
        "format": "flowmill/1",
        "id": "ticker",
        "nodes": [{"id": "tick", "type": "trigger.schedule", "config": {"every": "1h"}}],
        "edges": [],
    }
    service.save_flow(flow)
    editor = as_role("editor")
    assert [s["name"] for s in editor.get("/api/schedules").json] == ["flow:ticker:tick"]
    refused = editor.send("DELETE", "/api/schedules/flow:ticker:tick")
    assert refused.status_code == 400 and "trigger.schedule" in refused.json["error"]
    assert len(editor.get("/api/schedules").json) == 1


def test_a_malformed_body_is_a_400_naming_the_problem(as_role: Any):
    editor = as_role("editor")
    broken = editor.send(
        "POST",
        "/api/calendars",
        headers={"Content-Type": "application/json"},
        data='{"name": "x",',
    )
    assert broken.status_code == 400 and "line 1 column" in broken.json["error"]
    not_json = editor.send("POST", "/api/calendars", data="name=x")
    assert not_json.status_code == 400 and "application/json" in not_json.json["error"]
    array = editor.send("POST", "/api/calendars", [CALENDAR])
    assert array.status_code == 400 and "object" in array.json["error"]
    nan = editor.send(
        "POST",
        "/api/schedules",
        headers={"Content-Type": "application/json"},
        data='{"name": "x", "flow": "y", "every": "1h", "priority": NaN}',
    )
    assert nan.status_code == 400 and "NaN" in nan.json["error"]
    surrogate = editor.send(
        "POST",
        "/api/calendars",
        headers={"Content-Type": "application/json"},
        data='{"name": "\\ud800"}',
    )
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json["error"]


# -- calendars and conditions -----------------------------------------------------------------


def test_calendars_are_created_replaced_and_listed(as_role: Any):
    editor = as_role("editor")
    created = editor.send("POST", "/api/calendars", {**CALENDAR, "holidays": "de-bayern"})
    assert created.status_code == 201
    assert created.json == {"name": "munich", "holidays": "DE-BY", "exclusions": ["2030-12-24"]}
    replaced = editor.send("POST", "/api/calendars", {"name": "munich", "exclusions": []})
    assert replaced.status_code == 200
    assert editor.get("/api/calendars").json == [
        {"name": "munich", "holidays": None, "exclusions": []}
    ]
    bad_day = editor.send("POST", "/api/calendars", {"name": "x", "exclusions": ["24.12.2030"]})
    assert bad_day.status_code == 400 and bad_day.json["details"][0]["field"] == "exclusions"
    bad_region = editor.send("POST", "/api/calendars", {"name": "x", "holidays": "XX"})
    assert bad_region.status_code == 400 and "XX" in bad_region.json["error"]
    assert [c["name"] for c in editor.get("/api/calendars").json] == ["munich"]


def test_time_conditions_are_created_replaced_and_listed(as_role: Any, flow_on_server: str):
    editor = as_role("editor")
    assert editor.send("POST", "/api/calendars", CALENDAR).status_code == 201
    created = editor.send("POST", "/api/conditions", {**CONDITION, "calendar": "munich"})
    assert created.status_code == 201
    assert created.json == {
        "name": "office",
        "windows": {"workday": "06:00-20:00", "sunday": "none"},
        "calendar": "munich",
    }
    # a schedule outside every window can never fire: refused, naming the condition
    never = editor.send(
        "POST", "/api/schedules", {**SCHEDULE, "cron": "0 22 * * 1-5", "condition": "office"}
    )
    assert never.status_code == 400 and never.json["details"][0]["field"] == "condition"
    replaced = editor.send(
        "POST", "/api/conditions", {"name": "office", "windows": {"workday": "all"}}
    )
    assert replaced.status_code == 200
    assert editor.get("/api/conditions").json == [
        {"name": "office", "windows": {"workday": "all"}, "calendar": None}
    ]
    unknown_kind = editor.send("POST", "/api/conditions", {"name": "x", "windows": {"holiday": ""}})
    assert unknown_kind.status_code == 400 and "holiday" in unknown_kind.json["error"]
    closed = editor.send(
        "POST",
        "/api/conditions",
        {"name": "x", "windows": {"workday": "none", "saturday": "none", "sunday": "none"}},
    )
    assert closed.status_code == 400 and "never opens" in closed.json["error"]


# -- connections ------------------------------------------------------------------------------


def test_connections_are_write_only(as_role: Any, service: Flowmill):
    admin = as_role("admin")
    password = "Xq7-connection-password"
    created = admin.send(
        "POST",
        "/api/connections",
        {"name": "erp", "settings": {"url": f"postgresql+psycopg://erp:{password}@db/erp"}},
    )
    assert created.status_code == 201
    assert created.json == {"name": "erp", "type": "sql", "settings": ["url"], "error": None}
    assert password not in created.get_data(as_text=True)

    # a form changes one setting without seeing (or retyping) the password
    merged = admin.send(
        "POST",
        "/api/connections",
        {"name": "erp", "settings": {"schema": "sales"}, "merge": True},
    )
    assert merged.status_code == 200 and merged.json["settings"] == ["schema", "url"]
    assert service.store.get_connection("erp") == {
        "url": f"postgresql+psycopg://erp:{password}@db/erp",
        "schema": "sales",
    }
    dropped = admin.send(
        "POST", "/api/connections", {"name": "erp", "settings": {"schema": None}, "merge": True}
    )
    assert dropped.json["settings"] == ["url"]
    replaced = admin.send("POST", "/api/connections", {"name": "erp", "settings": {"dsn": "x"}})
    assert replaced.status_code == 200 and service.store.get_connection("erp") == {"dsn": "x"}

    viewer = as_role("viewer")
    assert viewer.get("/api/connections").json == [
        {"name": "erp", "type": None, "settings": ["dsn"], "error": None}
    ]
    wrong_type = admin.send("POST", "/api/connections", {"name": "erp", "settings": password})
    assert wrong_type.status_code == 400 and password not in wrong_type.get_data(as_text=True)
    bad_name = admin.send("POST", "/api/connections", {"name": " erp", "settings": {"a": 1}})
    assert bad_name.status_code == 400 and "connection name" in bad_name.json["error"]

    assert admin.send("DELETE", "/api/connections/erp").status_code == 200
    missing = admin.send("DELETE", "/api/connections/erp")
    assert missing.status_code == 404 and "erp" in missing.json["error"]
    assert admin.get("/api/connections").json == []


# -- flow import --------------------------------------------------------------------------------


def test_flow_import_as_json_and_as_file(as_role: Any, service: Flowmill):
    editor = as_role("editor")
    created = editor.send("POST", "/api/flows/import", {"flow": sample()})
    assert created.status_code == 201 and created.json["id"] == "csv-to-sql"
    assert created.json["enabled"] is True
    again = editor.send("POST", "/api/flows/import", {"flow": sample()})
    assert again.status_code == 200 and again.json["hash"] == created.json["hash"]

    renamed = {**sample(), "name": "uploaded"}
    upload = editor.send(
        "POST",
        "/api/flows/import",
        data={"file": (io.BytesIO(dump_flow(renamed).encode()), "csv-to-sql.flow.json")},
    )
    assert upload.status_code == 200, upload.json
    assert service.flows.get("csv-to-sql")[0]["name"] == "uploaded"
    new = {**sample(), "id": "copy-of-sales"}
    assert (
        editor.send(
            "POST",
            "/api/flows/import",
            data={"file": (io.BytesIO(json.dumps(new).encode()), "copy.json")},
        ).status_code
        == 201
    )
    assert editor.get("/api/flows/copy-of-sales/export").get_data(as_text=True) == dump_flow(new)


def test_flow_import_refuses_invalid_and_malformed_flows(as_role: Any, service: Flowmill):
    editor = as_role("editor")
    broken = sample()
    broken["edges"].append(
        {"source": "map-amounts", "source_port": "out", "target": "ghost", "target_port": "in"}
    )
    invalid = editor.send("POST", "/api/flows/import", {"flow": broken})
    assert invalid.status_code == 422
    assert any("ghost" in json.dumps(d) for d in invalid.json["details"])
    assert service.flows.list() == []  # nothing saved

    malformed = editor.send(
        "POST",
        "/api/flows/import",
        headers={"Content-Type": "application/json"},
        data='{"flow": {"id": "x",}}',
    )
    assert malformed.status_code == 400
    assert re.search(r"not valid JSON: .* at line 1 column \d+", malformed.json["error"])
    bad_file = editor.send(
        "POST", "/api/flows/import", data={"file": (io.BytesIO(b"\xff{"), "sales.flow.json")}
    )
    assert bad_file.status_code == 400 and "sales.flow.json" in bad_file.json["error"]
    no_file = editor.send("POST", "/api/flows/import", data={"other": (io.BytesIO(b"{}"), "x")})
    assert no_file.status_code == 400 and no_file.json["details"][0]["field"] == "file"
    form = editor.send("POST", "/api/flows/import", data="flow=x")
    assert form.status_code == 400 and "multipart" in form.json["error"]
    no_flow = editor.send("POST", "/api/flows/import", {"flw": sample()})
    assert no_flow.status_code == 400 and "flow" in no_flow.json["error"]
    hostile = editor.send(
        "POST",
        "/api/flows/import",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"flow": {**sample(), "__proto__": {"admin": True}}}),
    )
    assert hostile.status_code == 400 and "__proto__" in hostile.json["error"]
    assert service.flows.list() == []


def test_running_a_flow_never_reads_a_file_of_the_server(
    as_role: Any, service: Flowmill, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(SAMPLE.parent)  # a *.flow.json lies in the server's working directory
    reply = as_role("operator").send("POST", f"/api/flows/{SAMPLE.name}/run", {})
    assert reply.status_code == 404
    assert service.jobs.list() == []


# -- no secret ever leaves the server ---------------------------------------------------------


def _leaky_flow() -> dict[str, Any]:
    """Reads through a stored connection and through a $secret URL (both fail to connect)."""
    return {
        "format": "flowmill/1",
        "id": "leaky",
        "name": "uses every kind of secret",
        "nodes": [
            {
                "id": "by-connection",
                "type": "sql.read",
                "config": {"connection": "erp", "query": "SELECT 1"},
            },
            {
                "id": "by-secret",
                "type": "sql.read",
                "config": {"url": {"$secret": "shop_url"}, "query": "SELECT 1"},
            },
        ],
        "edges": [],
    }


def test_secrets_never_appear_in_any_answer(as_role: Any, service: Flowmill):
    password = "Zr8-conn-PASSWORD-4711"
    token = "Qv3-api-TOKEN-0815"
    secret = "Kx9-secret-VALUE-1234"
    service.set_connection(
        "erp",
        {"url": f"postgresql+psycopg://erp:{password}@127.0.0.1:1/erp", "api_token": token},
    )
    service.set_secret("shop_url", f"postgresql+psycopg://shop:{secret}@127.0.0.1:1/shop")
    events: list[str] = []  # what /live would broadcast
    service.bus.subscribe(Event, lambda e: events.append(json.dumps(e.to_dict(), default=str)))
    service.save_flow(_leaky_flow())
    service.import_flow(SAMPLE)
    job = service.submit("leaky")
    claimed = service.jobs.claim("test-worker")
    assert run_job(service, claimed.id, "test-worker", 5.0, threading.Event()) == "failed"
    service.set_calendar("munich", "DE-BY", [date(2030, 12, 24)])
    service.set_condition("office", {"workday": "06:00-20:00"})
    service.add_schedule("nightly", "csv-to-sql", {"cron": "0 7 * * 1-5"})

    admin = as_role("admin")
    ids = {"flow_id": "leaky", "job_id": str(job.id), "name": "nightly"}
    answers: dict[str, str] = {}
    for route in ROUTES:
        if route.method != "GET":
            continue
        path = "/api" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ids[m.group(1)], route.path)
        reply = admin.get(path)
        assert reply.status_code == 200, (path, reply.json)
        answers[path] = reply.get_data(as_text=True)
    answers["/metrics"] = admin.get("/metrics").get_data(as_text=True)
    # the answers really are about the things holding the secrets
    assert "by-secret" in answers[f"/api/jobs/{job.id}"]
    assert "by-connection" in answers[f"/api/jobs/{job.id}/log"]
    assert "api_token" in answers["/api/connections"]
    assert "leaky" in answers["/api/flows/leaky/export"]
    for path, text in answers.items():
        for value in (password, token, secret):
            assert value not in text, f"{value} leaked in GET {path}"
    assert any('"NodeFinished"' in e and "by-secret" in e for e in events)
    for text in events:
        for value in (password, token, secret):
            assert value not in text, f"{value} leaked in the event {text[:200]}"


def test_a_connection_that_cannot_be_decrypted_is_listed_with_the_reason(
    as_role: Any, service: Flowmill, monkeypatch: pytest.MonkeyPatch
):
    service.set_connection("erp", {"url": "sqlite:///erp.db"})

    def other_key(name: str) -> dict[str, Any]:
        raise SecretKeyError(f"connection {name!r} was encrypted with another key")

    monkeypatch.setattr(service.store, "get_connection", other_key)
    listed = as_role("viewer").get("/api/connections")
    assert listed.status_code == 200
    assert listed.json == [
        {
            "name": "erp",
            "type": None,
            "settings": [],
            "error": "connection 'erp' was encrypted with another key",
        }
    ]


def test_values_no_database_can_store_are_refused_not_crashed_on(as_role: Any, flow_on_server: str):
    """What the property-based run found (5xx before): each is now a 4xx naming the field."""
    operator = as_role("operator")
    for job_id in (2**31, 10**30):  # jobs.id is 32 bits in PostgreSQL; SQLite stops at 64
        assert operator.get(f"/api/jobs/{job_id}").status_code == 404
    for body, field in [
        ({"not_before": "0001-01-01T00:00:00+14:00"}, "not_before"),  # year 0 in UTC
        ({"not_before": "9999-12-31T23:59:59-14:00"}, "not_before"),  # year 10000 in UTC
        ({"max_delay": "99999999w"}, "max_delay"),  # expires after 9999
        ({"priority": 2**31}, "priority"),
        ({"group": "g" * 201}, "group"),
    ]:
        reply = operator.send("POST", "/api/flows/csv-to-sql/run", body)
        assert reply.status_code == 400, (body, reply.json)
        assert field in [d["field"] for d in reply.json["details"]], reply.json
    for path, field in [
        ("/api/jobs?limit=x", "limit"),
        ("/api/jobs?limit=-1", "limit"),
        ("/api/schedules?upcoming=51", "upcoming"),
        ("/api/jobs?flow=a%00b", None),
        ("/api/flows/a%00b", None),
    ]:
        reply = operator.get(path)
        assert reply.status_code == 400, path
        if field is None:
            assert "NUL" in reply.json["error"]
        else:
            assert reply.json["details"][0]["field"] == field
    editor = as_role("editor")
    for spec in ({"every": "9999999w"}, {"every": "1h", "anchor": "9999-12-31T23:59:59-14:00"}):
        reply = editor.send("POST", "/api/schedules", {"name": "x", "flow": "csv-to-sql", **spec})
        assert reply.status_code == 400, (spec, reply.json)
    nul = editor.send("POST", "/api/calendars", {"name": "x", "holidays": "DE\u0000"})
    assert nul.status_code == 400 and "NUL" in nul.json["error"]
    login = as_role(None).send("POST", "/api/login", 8.1e-11)  # a number, not an object
    assert login.status_code == 400


def test_a_connection_can_be_tested_from_the_api(
    as_role: Any, service: Flowmill, tmp_path: Path
) -> None:
    admin = as_role("admin")
    db = tmp_path / "erp.db"
    db.write_bytes(b"")
    service.set_connection("erp", {"url": f"sqlite:///{db}"})
    ok = admin.send("POST", "/api/connections/erp/test")
    assert ok.status_code == 200 and ok.json["ok"] is True and ok.json["type"] == "sql"
    service.set_connection("pg", {"url": "postgresql+psycopg://nobody:Pw-77@127.0.0.1:1/x"})
    down = admin.send("POST", "/api/connections/pg/test")
    assert down.status_code == 200 and down.json["ok"] is False
    assert "cannot connect to" in down.json["error"] and "Pw-77" not in down.get_data(as_text=True)
    assert admin.send("POST", "/api/connections/none/test").status_code == 404
