"""The downloads sample: a forecast and a webcam still fetched from a local web server,
on an hourly schedule that keeps to workdays 06:00-20:00."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import holidays
import pytest
from PIL import Image

BERLIN = ZoneInfo("Europe/Berlin")
FORECAST = json.dumps(
    {"place": "München", "hourly": [{"hour": h, "temp_c": 12.5 + h / 10} for h in range(24)]},
    ensure_ascii=False,
).encode("utf-8")


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(out, format="JPEG", quality=80)
    return out.getvalue()


STILL = _jpeg()
HUGE = b"\xff\xd8\xff\xe0" + b"\0" * 6_000_000  # over the sample's 5 MB default


class Handler(BaseHTTPRequestHandler):
    # path -> (content type, body, send Content-Length)
    routes: ClassVar[dict[str, tuple[str, bytes, bool]]] = {
        "/forecast.json": ("application/json; charset=utf-8", FORECAST, True),
        "/still.jpg": ("image/jpeg", STILL, True),
        "/error-page.jpg": ("text/html; charset=utf-8", b"<html>502 Proxy Error</html>", True),
        "/huge.jpg": ("image/jpeg", HUGE, True),
        "/huge-stream.jpg": ("image/jpeg", HUGE, False),
    }

    def do_GET(self) -> None:
        kind, body, with_length = self.routes[self.path]
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if with_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            for start in range(0, len(body), 64 * 1024):
                self.wfile.write(body[start : start + 64 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: that is the point of a size limit

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def _params(web: Any, folder: Path, webcam: str = "/still.jpg") -> dict[str, Any]:
    return {
        "forecast_url": f"{web.base}/forecast.json",
        "webcam_url": f"{web.base}{webcam}",
        "download_dir": str(folder),
    }


def test_forecast_and_webcam_still_are_saved_with_their_bytes(demo: Any, web: Any) -> None:
    folder = demo.data_dir / "demo" / "downloads"
    job = demo.run("downloads", {"forecast_url": f"{web.base}/forecast.json",
                                 "webcam_url": f"{web.base}/still.jpg"})  # fmt: skip

    assert job.state == "succeeded", demo.log(job)
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2, files
    forecast, webcam = (folder / f for f in files)
    assert forecast.name.startswith("forecast-") and forecast.suffix == ".json"
    assert webcam.name.startswith("webcam-") and webcam.suffix == ".jpg"
    assert forecast.name[len("forecast-") : -5] == webcam.name[len("webcam-") : -4]
    datetime.strptime(forecast.name[len("forecast-") : -5], "%Y-%m-%d-%H%M")
    assert forecast.read_bytes() == FORECAST
    assert webcam.read_bytes() == STILL
    assert Image.open(webcam).size == (64, 48)
    assert sorted(web.requests) == ["/forecast.json", "/still.jpg"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/error-page.jpg", "text/html"),
        ("/huge.jpg", "5000000"),
        ("/huge-stream.jpg", "5000000"),
    ],
)
def test_wrong_content_type_or_too_big_is_refused_and_leaves_no_file(
    demo: Any, web: Any, tmp_path: Path, path: str, reason: str
) -> None:
    folder = tmp_path / "downloads"
    job = demo.run("downloads", _params(web, folder, webcam=path))

    assert job.state == "failed"
    assert job.error_node == "download-webcam"
    assert reason in (job.error or ""), job.error
    assert path in web.requests
    # of the still nothing is left, not even a partial file. The forecast is a parallel
    # branch that the failure stops wherever it is: it is there complete or not at all
    names = [p.name for p in folder.rglob("*")] if folder.exists() else []
    assert all(n.startswith("forecast-") and n.endswith(".json") for n in names), names
    assert len(names) <= 1
    assert all((folder / n).read_bytes() == FORECAST for n in names)


def test_the_schedule_fires_hourly_only_on_workdays_from_6_to_20(demo: Any) -> None:
    demo.load("downloads")
    demo.app.arm_triggers()
    info = demo.app.schedules.get("flow:downloads:every-hour")
    # Thursday 30 April 2026 to the Tuesday after; 1 May (Friday) is a public holiday
    start = datetime(2026, 4, 30, 0, 0, tzinfo=BERLIN)
    fires = demo.app.preview_schedule(info.spec, start, 40)

    bavaria = holidays.Germany(subdiv="BY", years=2026)
    for moment in fires:
        local = moment.astimezone(BERLIN)
        assert local.weekday() < 5 and local.date() not in bavaria, local
        assert 6 <= local.hour < 20 and local.minute == 0, local
    by_day: dict[str, int] = {}
    for moment in fires:
        day = moment.astimezone(BERLIN).date().isoformat()
        by_day[day] = by_day.get(day, 0) + 1
    assert by_day == {"2026-04-30": 14, "2026-05-04": 14, "2026-05-05": 12}
    assert fires[0].astimezone(BERLIN) == start + timedelta(hours=6)
    assert fires[14].astimezone(BERLIN) == datetime(2026, 5, 4, 6, 0, tzinfo=BERLIN)
