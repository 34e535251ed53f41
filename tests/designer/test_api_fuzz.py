"""Property-based run of every API operation (schemathesis, from /api/openapi.json): no
input, valid or not, makes the server answer 5xx.

The app runs in-process (WSGI); the caller is an admin with an API token, so every
operation gets past the permission check. Each operation gets a bounded number of
examples, generated from its schema (positive) and against it (negative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from engine.service import Flowmill

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "csv-to-sql.flow.json"
EXAMPLES = 25


def seed(service: Flowmill) -> dict[str, Any]:
    """Real things to find, change and delete (again after an example deleted them), so
    examples that name them get past the 404 into the code behind it."""
    service.import_flow(SAMPLE)
    if not service.jobs.list(limit=1):
        service.submit("csv-to-sql")
    service.set_calendar("munich", "DE-BY", ["2030-12-24"])
    service.set_condition("office", {"workday": "06:00-20:00"})
    service.add_schedule("nightly", "csv-to-sql", {"cron": "0 7 * * 1-5"})
    service.set_connection("erp", {"url": "sqlite:///erp.db"})
    return {"flow_id": "csv-to-sql", "job_id": service.jobs.list(limit=1)[0].id, "name": "nightly"}


def test_no_operation_answers_with_a_server_error(web: Any, service: Flowmill):
    real_ids = seed(service)
    _, token = service.users.create_token("admin", "schemathesis")
    auth = {"Authorization": f"Bearer {token}"}

    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", web)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        names = {parameter.name for parameter in operation.path_parameters}
        given_ids = {k: v for k, v in real_ids.items() if k in names}
        # generated path values almost never name a real flow or job: also run with real ones
        for mode, ids in [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
            *([(GenerationMode.POSITIVE, given_ids)] if given_ids else []),
        ]:
            seed(service)

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=ids))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same examples every run: a failure is reproducible
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def no_server_error(case: Any) -> None:
                response = case.call(headers=auth)
                case.validate_response(response, checks=[not_a_server_error])

            no_server_error()
