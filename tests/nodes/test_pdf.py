"""pdf.render: a German sales report, read back with pdftotext and looked at as a PNG."""

from __future__ import annotations

import hashlib
import re
import subprocess
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from engine.errors import NodeError
from engine.testing import run_node
from nodes.pdf import PDF_RENDER, check_render

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
NAMES = ["Müller GmbH", "Größe & Söhne KG", "Bäckerei Weiß", "Jürgen Öztürk"]

needs_poppler = pytest.mark.usefixtures("poppler")


def _records(n: int) -> list[dict]:
    return [
        {
            "nr": 1000 + i,
            "kunde": NAMES[i % len(NAMES)],
            "datum": date(2026, 1 + i % 12, 1 + i % 28),
            "menge": i % 7 + 1,
            "betrag": Decimal("1234.56") + i,
            "region": "Süd",
        }
        for i in range(n)
    ]


def _logo(path: Path) -> Path:
    img = Image.new("RGB", (160, 60), (30, 80, 160))
    ImageDraw.Draw(img).rectangle((10, 10, 150, 50), fill=(250, 200, 40))
    img.save(path)
    return path


def _config(tmp_path: Path, **extra) -> dict:
    return {
        "path": str(tmp_path / "out" / "umsatz-{region}.pdf"),
        "title": "Umsatzbericht Region {region}",
        "header_fields": [
            {"label": "Kunde", "value": "Alle Kunden"},
            {"label": "Zeitraum", "value": "01.01.2026 – 31.12.2026"},
        ],
        "columns": [
            {"field": "nr", "title": "Beleg", "width": 20},
            {"field": "kunde", "title": "Kunde"},
            {"field": "datum", "title": "Datum", "width": 25, "format": "date:%d.%m.%Y"},
            {"field": "menge", "title": "Menge", "width": 18, "format": "{:d}"},
            {"field": "betrag", "title": "Betrag", "width": 35, "format": "de:{:,.2f} €"},
        ],
        "totals": ["menge", "betrag"],
        "logo": str(_logo(tmp_path / "logo.png")),
        **extra,
    }


def _text(pdf: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout


@needs_poppler
def test_sales_report_has_title_rows_totals_and_page_numbers(tmp_path: Path):
    records = _records(120)
    result = run_node(PDF_RENDER, _config(tmp_path), {"in": records}, batch_size=50)

    [out] = result["out"]
    pdf = Path(out["path"])
    assert pdf == tmp_path / "out" / "umsatz-Süd.pdf" and out["name"] == "umsatz-Süd.pdf"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and out["size"] == len(data)
    assert out["sha256"] == hashlib.sha256(data).hexdigest()
    assert out["rows"] == 120 and out["pages"] == 3
    text = _text(pdf)
    assert "Umsatzbericht Region Süd" in text
    assert "01.01.2026 – 31.12.2026" in text
    assert any(
        "1000" in line and "Müller GmbH" in line and "01.01.2026" in line and "1.234,56 €" in line
        for line in text.splitlines()
    )
    total_menge = sum(r["menge"] for r in records)
    total_betrag = sum(r["betrag"] for r in records)  # 1234.56 * 120 + 7140
    assert f"{total_betrag:,.2f}".translate(str.maketrans(".,", ",.")) == "155.287,20"
    summe = next(line for line in text.splitlines() if line.strip().startswith("Summe"))
    assert str(total_menge) in summe and "155.287,20 €" in summe
    for page in (1, 2, 3):
        assert f"Seite {page} von 3" in text
    # the column headings repeat on every page
    assert text.count("Beleg") == 3

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / "pdf-render-page1"
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "60",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf),
            str(target),
        ],
        check=True,
    )
    with Image.open(target.with_suffix(".png")) as page:
        assert page.size[0] > 400  # A4 at 60 dpi is about 496 x 702


@needs_poppler
def test_page_label_and_core_font_fall_back_to_latin1(tmp_path: Path):
    config = _config(tmp_path, font="helvetica", page_label="Page {page}/{pages}", logo="")
    [out] = run_node(PDF_RENDER, config, {"in": _records(3)})["out"]
    text = _text(Path(out["path"]))
    assert "Page 1/1" in text and "Müller GmbH" in text
    assert "1.234,56 EUR" in text  # latin-1 has no €


def test_a_value_that_does_not_fit_its_format_is_routed_with_the_column_named(tmp_path: Path):
    records = _records(3)
    records[1]["betrag"] = "viel"
    result = run_node(PDF_RENDER, {**_config(tmp_path), "on_error": "route"}, {"in": records})
    assert result["out"][0]["rows"] == 2
    [bad] = result["error"]
    assert bad["nr"] == 1001 and "column 'betrag'" in bad["_error"]


def test_bad_format_string_is_a_config_problem_naming_the_column(tmp_path: Path):
    config = _config(tmp_path)
    config["columns"][4]["format"] = "{:,.2f} {0.__class__}"
    problems = check_render(config)
    assert [p.field for p in problems] == ["columns.4.format"]
    assert "column 'betrag'" in problems[0].message
    config["columns"][4]["format"] = "{:99999999999f}"  # no gigabyte of padding either
    assert [p.field for p in check_render(config)] == ["columns.4.format"]
    config["columns"][2]["format"] = "date:dd.mm.yyyy"
    assert "columns.2.format" in [p.field for p in check_render(config)]
    with pytest.raises(NodeError, match=r"columns\.2\.format: column 'datum'"):
        run_node(PDF_RENDER, config, {"in": _records(1)})


def test_missing_logo_fails_naming_the_field(tmp_path: Path):
    config = _config(tmp_path, logo=str(tmp_path / "fehlt.png"))
    with pytest.raises(NodeError, match=r"logo: file .*fehlt\.png not found"):
        run_node(PDF_RENDER, config, {"in": _records(2)})
    (tmp_path / "kaputt.png").write_text("no image")
    config = _config(tmp_path, logo=str(tmp_path / "kaputt.png"))
    with pytest.raises(NodeError, match=r"logo: .*kaputt\.png is not a PNG or JPEG"):
        run_node(PDF_RENDER, config, {"in": _records(2)})
    assert not (tmp_path / "out").exists()


def test_path_field_missing_from_the_records_is_named(tmp_path: Path):
    config = _config(tmp_path, path=str(tmp_path / "{filiale}.pdf"))
    with pytest.raises(NodeError, match=r"path: field 'filiale' is not in the first record"):
        run_node(PDF_RENDER, config, {"in": _records(1)})


def test_totals_must_be_columns():
    config = {"path": "x.pdf", "columns": [{"field": "a"}], "totals": ["b"]}
    assert [p.field for p in check_render(config)] == ["totals"]


@needs_poppler
def test_group_by_makes_one_document_per_customer_with_its_own_rows_and_total(tmp_path: Path):
    records = sorted(_records(9), key=lambda r: r["kunde"])
    config = _config(
        tmp_path,
        path=str(tmp_path / "out" / "bericht-{kunde}.pdf"),
        title="Offene Posten {kunde}",
        header_fields=[{"label": "Kunde", "value": "{kunde}"}],
        group_by=["kunde"],
        logo="",
    )
    result = run_node(PDF_RENDER, config, {"in": records}, batch_size=4)

    outs = result["out"]
    assert [o["kunde"] for o in outs] == sorted(set(NAMES))
    for out in outs:
        mine = [r for r in records if r["kunde"] == out["kunde"]]
        assert out["name"] == f"bericht-{out['kunde']}.pdf" and out["rows"] == len(mine)
        text = _text(Path(out["path"]))
        assert f"Offene Posten {out['kunde']}" in text
        assert sorted(int(n) for n in re.findall(r"^\s*(1\d{3})\s", text, re.M)) == sorted(
            r["nr"] for r in mine
        )
        total = f"{sum(r['betrag'] for r in mine):,.2f}".translate(str.maketrans(".,", ",."))
        summe = next(line for line in text.splitlines() if line.strip().startswith("Summe"))
        assert f"{total} €" in summe
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(o["name"] for o in outs)


def test_group_by_fails_when_a_group_comes_again_or_two_groups_share_a_path(tmp_path: Path):
    records = _records(5)  # kunde: A B C D A, not sorted
    config = _config(tmp_path, path=str(tmp_path / "g-{kunde}.pdf"), group_by=["kunde"], logo="")
    with pytest.raises(NodeError, match=r"group_by: the group .*Müller GmbH.* sort the records"):
        run_node(PDF_RENDER, config, {"in": records})
    config = _config(tmp_path, path=str(tmp_path / "alle.pdf"), group_by=["kunde"], logo="")
    with pytest.raises(NodeError, match=r"alle\.pdf is already the document of another group"):
        run_node(PDF_RENDER, config, {"in": records[:2]})


def test_group_by_without_records_makes_no_document_and_may_not_shadow_file_fields(
    tmp_path: Path,
):
    config = _config(tmp_path, group_by=["region"], logo="")
    assert run_node(PDF_RENDER, config, {"in": []})["out"] == []
    assert not (tmp_path / "out").exists()
    assert [p.field for p in check_render({**config, "group_by": ["name"]})] == ["group_by"]
