"""PDF report node: the records of 'in' as a table in a PDF document, one file record out.

``pdf.render`` draws a title, a logo, header fields, a table with one row per record (the
column headings repeat on every page), a totals row and "Seite X von Y" page numbers.
Records are drawn as they stream in; fpdf2 keeps the finished pages in memory until the file
is written, so memory grows with the page count, not with batches held back.

Formats are a small mini-language, never eval: a Python format spec checked against a strict
pattern (``{:,.2f} €``), ``date:%d.%m.%Y`` for dates, and a ``de:`` prefix that swaps the
decimal and thousands separators (``1.234,56``). Templates (title, header values, path)
insert fields of the first record with ``{field}`` or ``{field:spec}``; run params come in
earlier through ``${name}``.

``group_by`` makes one document per group of consecutive records (one report per
customer): a document is finished and written when the next group starts, so the input
must be sorted by the group fields; a group that comes back later is an error rather than
a silently overwritten file.

Fonts: fpdf2's core fonts (Helvetica, Times, Courier) only hold latin-1, so umlauts work but
€ and typographic quotes do not. The default font is therefore DejaVu Sans from Debian's
fonts-dejavu-core package when it is installed (Unicode, nothing downloaded or bundled);
without it the node falls back to Helvetica and replaces what latin-1 cannot hold (€ → EUR).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fpdf import FPDF

from engine.errors import NodeError
from engine.spec import Batch, ConfigProblem, Inputs, NodeSpec, Outputs, RunContext, Stream

__all__ = ["NODES", "PDF_RENDER", "PDF_SCHEMA", "check_render", "render_pdf"]

CORE_FONTS = ("helvetica", "times", "courier")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PAGE_SIZES = ("A4", "A3", "A5", "letter", "legal")
ALIGNS = {"left": "L", "center": "C", "right": "R"}
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]; widths are capped so a
# format cannot ask for a gigabyte of padding.
_NUMBER_SPEC = re.compile(
    r"(?:.?[<>=^])?[+\- ]?z?#?0?(?:\d{1,3})?[,_]?(?:\.\d{1,2})?[bcdeEfFgGnosxX%]?"
)
_STRFTIME_SPEC = re.compile(r"[^{}]*%[A-Za-z][^{}]*")
_INT_TYPES = set("bcdoxXn")
_NUMERIC_TYPES = set("eEfFgG%") | _INT_TYPES
_DE_SWAP = str.maketrans({".": ",", ",": "."})
# what latin-1 core fonts cannot hold, replaced by the nearest text they can
_LATIN1_FALLBACK = str.maketrans(
    {
        "€": "EUR",
        "–": "-",
        "—": "-",
        "„": '"',
        "“": '"',
        "”": '"',
        "‚": "'",
        "‘": "'",
        "’": "'",
        "…": "...",
        "•": "-",
    }
)

# -- schema -------------------------------------------------------------------------------

_COLUMN = {
    "type": "object",
    "title": "Column",
    "additionalProperties": False,
    "required": ["field"],
    "properties": {
        "field": {
            "type": "string",
            "minLength": 1,
            "title": "Field",
            "description": "Record field shown in this column.",
        },
        "title": {
            "type": "string",
            "title": "Heading",
            "description": "Column heading; empty: the field name.",
        },
        "width": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1000,
            "title": "Width (mm)",
            "description": "Column width; columns without a width share the rest of the page.",
        },
        "align": {
            "type": "string",
            "enum": list(ALIGNS),
            "title": "Alignment",
            "description": "Empty: right for number formats, left otherwise.",
        },
        "format": {
            "type": "string",
            "default": "",
            "examples": ["{:,.2f}", "de:{:,.2f} €", "de:{:,.0f}", "date:%d.%m.%Y", "{:>8}"],
            "title": "Format",
            "description": "How values are shown. '{:,.2f}' is a Python format spec with "
            "text around it allowed ('{:,.2f} €'); 'de:' in front swaps '.' and ',' "
            "(1.234,56); 'date:%d.%m.%Y' formats dates and ISO date strings. Empty: as is.",
        },
    },
}

_HEADER_FIELD = {
    "type": "object",
    "title": "Header field",
    "additionalProperties": False,
    "required": ["label"],
    "properties": {
        "label": {"type": "string", "title": "Label", "description": "e.g. 'Kunde'."},
        "value": {
            "type": "string",
            "default": "",
            "title": "Value",
            "description": "Text; '{field}' or '{field:%d.%m.%Y}' inserts a field of the "
            "first record, '${name}' a run param.",
        },
    },
}

PDF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Render PDF",
    "additionalProperties": False,
    "required": ["path", "columns"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "examples": ["${data_dir}/reports/umsatz-${today}.pdf"],
            "title": "Path",
            "description": "PDF file to write; '~' is expanded, relative paths are relative "
            "to the working directory, missing folders are created. '{field}' inserts a "
            "field of the first record.",
        },
        "title": {
            "type": "string",
            "default": "",
            "title": "Title",
            "description": "Heading on the first page; '{field}' inserts a field of the "
            "first record.",
        },
        "header_fields": {
            "type": "array",
            "default": [],
            "items": _HEADER_FIELD,
            "title": "Header fields",
            "description": "Label/value lines under the title (customer, period, ...).",
        },
        "columns": {
            "type": "array",
            "minItems": 1,
            "items": _COLUMN,
            "title": "Columns",
            "description": "Table columns, left to right.",
        },
        "totals": {
            "type": "array",
            "default": [],
            "items": {"type": "string", "minLength": 1},
            "title": "Totals",
            "description": "Column fields to sum in a totals row under the table; each "
            "sum is shown with its column's format.",
        },
        "totals_label": {
            "type": "string",
            "default": "Summe",
            "title": "Totals label",
            "description": "Text in the first column of the totals row.",
        },
        "logo": {
            "type": "string",
            "default": "",
            "title": "Logo",
            "description": "PNG or JPEG file shown at the top right of the first page.",
        },
        "logo_height": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 100,
            "default": 15,
            "title": "Logo height (mm)",
            "description": "The width follows from the image's aspect ratio.",
        },
        "orientation": {
            "type": "string",
            "enum": ["portrait", "landscape"],
            "default": "portrait",
            "title": "Orientation",
            "description": "Page orientation.",
        },
        "page_size": {
            "type": "string",
            "enum": list(PAGE_SIZES),
            "default": "A4",
            "title": "Page size",
            "description": "Paper size.",
        },
        "font": {
            "type": "string",
            "default": "",
            "examples": ["", "helvetica", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"],
            "title": "Font",
            "description": "Empty: DejaVu Sans if installed (all of Unicode), else Helvetica. "
            "helvetica, times or courier: built-in fonts that hold only latin-1 (€ is "
            "written as EUR). A path to a .ttf file: that font (a '-Bold' file next to it "
            "is used for headings).",
        },
        "font_size": {
            "type": "number",
            "minimum": 5,
            "maximum": 20,
            "default": 9,
            "title": "Font size (pt)",
            "description": "Size of the table text; the title is twice as large.",
        },
        "page_label": {
            "type": "string",
            "default": "Seite {page} von {pages}",
            "title": "Page label",
            "description": "Footer on every page; {page} is the page number, {pages} the "
            "page count. Empty: no page numbers.",
        },
        "overwrite": {
            "type": "boolean",
            "default": True,
            "title": "Overwrite",
            "description": "Replace an existing file. Off: the node fails if the file exists.",
        },
        "group_by": {
            "type": "array",
            "default": [],
            "items": {"type": "string", "minLength": 1},
            "title": "One document per",
            "description": "Fields whose values make a group, e.g. ['customer_id']: one PDF "
            "per group instead of one for all records. Records must arrive sorted by these "
            "fields (transform.sort or ORDER BY). Path, title and header fields are filled "
            "from each group's first record, so the path must tell groups apart; 'out' gets "
            "one file record per document with the group's fields added. Empty: one PDF.",
        },
    },
}

# the fields of a finished document's record ('out'); group fields may not shadow them
FILE_FIELDS = ("path", "name", "size", "pages", "rows", "sha256")

_DEFAULTS = {k: p["default"] for k, p in PDF_SCHEMA["properties"].items() if "default" in p}


def _error(ctx: RunContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


# -- formats and templates ----------------------------------------------------------------


class FormatError(ValueError):
    """A format or template that the mini-language does not allow."""


def _check_spec(spec: str) -> None:
    if _STRFTIME_SPEC.fullmatch(spec) or _NUMBER_SPEC.fullmatch(spec):
        return
    raise FormatError(f"format spec {spec!r} is not allowed (e.g. ',.2f', '>10', '%d.%m.%Y')")


def format_value(value: Any, spec: str) -> str:
    """``value`` shown with an already checked ``spec``; raises ValueError when it does not fit.

    Numbers given as text are parsed for number specs; dates given as ISO text for date specs.
    """
    if value is None:
        return ""
    if not spec:
        return str(value)
    if "%" in spec and spec[-1] != "%":
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, date):
            raise ValueError(f"{value!r} is not a date")
        return value.strftime(spec)
    kind = spec[-1]
    if kind in _NUMERIC_TYPES:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        if isinstance(value, str):
            try:
                value = Decimal(value.strip())
            except InvalidOperation:
                raise ValueError(f"{value!r} is not a number") from None
        if kind in _INT_TYPES and not isinstance(value, int):
            if value != int(value):
                raise ValueError(f"{value!r} is not a whole number")
            value = int(value)
    return format(value, spec)


@dataclass(frozen=True)
class Template:
    """Literal text with ``{field}``/``{field:spec}`` slots, parsed once, filled per use."""

    parts: tuple[tuple[str, str | None, str], ...]  # (literal, field or None, spec)

    @classmethod
    def parse(cls, text: str, *, anonymous: bool = False) -> Template:
        """``anonymous``: slots have no field name (column formats: ``{:,.2f} €``)."""
        parts: list[tuple[str, str | None, str]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise FormatError(f"{text!r}: {exc} (write '{{{{' for a literal brace)") from None
        for literal, name, spec, conversion in parsed:
            if name is None:
                parts.append((literal, None, ""))
                continue
            if conversion:
                raise FormatError(f"{text!r}: '!{conversion}' is not allowed")
            if "{" in (spec or ""):
                raise FormatError(f"{text!r}: nested '{{' in a format spec is not allowed")
            if anonymous and name:
                raise FormatError(f"{text!r}: write '{{:spec}}' without a field name")
            if not anonymous and not name.isidentifier():
                raise FormatError(
                    f"{text!r}: {{{name}}} is not a plain field name (no '.', '[' or numbers)"
                )
            _check_spec(spec or "")
            parts.append((literal, name, spec or ""))
        return cls(tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _ in self.parts if name)

    def render(self, values: Mapping[str, Any], value: Any = None) -> str:
        """Fill the slots from ``values`` (named) or with ``value`` (anonymous)."""
        out: list[str] = []
        for literal, name, spec in self.parts:
            out.append(literal)
            if name is not None:
                out.append(format_value(values.get(name) if name else value, spec))
        return "".join(out)


@dataclass(frozen=True)
class ColumnFormat:
    """A column's compiled ``format``: a template with one anonymous slot, maybe German."""

    template: Template
    german: bool
    numeric: bool

    @classmethod
    def parse(cls, text: str) -> ColumnFormat:
        german = text.startswith("de:")
        body = text[3:] if german else text
        if body.startswith("date:"):
            spec = body[5:]
            if "%" not in spec:
                raise FormatError(f"{text!r}: a date format needs % codes, e.g. date:%d.%m.%Y")
            body = "{:" + spec.replace("{", "{{").replace("}", "}}") + "}"
        elif body and "{" not in body:
            body = "{:" + body + "}"  # a bare spec like ',.2f'
        template = Template.parse(body, anonymous=True) if body else Template((("", "", ""),))
        slots = [spec for _, name, spec in template.parts if name is not None]
        if len(slots) != 1:
            raise FormatError(f"{text!r}: needs exactly one '{{...}}' slot for the value")
        spec = slots[0]
        numeric = bool(spec) and spec[-1] in _NUMERIC_TYPES and "%" not in spec[:-1]
        return cls(template, german, numeric)

    def __call__(self, value: Any) -> str:
        if value is None:
            return ""
        if not self.german:
            return self.template.render({}, value)
        out: list[str] = []
        for literal, name, spec in self.template.parts:
            out.append(literal)
            if name is not None:
                out.append(format_value(value, spec).translate(_DE_SWAP))
        return "".join(out)


# -- config check -------------------------------------------------------------------------


def check_render(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of a pdf.render config (what the JSON Schema cannot express)."""
    cfg = {**_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    for key in ("path", "title"):
        try:
            Template.parse(str(cfg.get(key) or ""))
        except FormatError as exc:
            problems.append(ConfigProblem(key, str(exc)))
    if not cfg.get("path"):
        problems.append(ConfigProblem("path", "give the PDF file to write"))
    for i, header in enumerate(cfg["header_fields"] or []):
        try:
            Template.parse(str(header.get("value") or ""))
        except (FormatError, AttributeError) as exc:
            problems.append(ConfigProblem(f"header_fields.{i}.value", str(exc)))
    columns = cfg.get("columns") or []
    if not columns:
        problems.append(ConfigProblem("columns", "list at least one column"))
    fields: list[str] = []
    for i, col in enumerate(columns):
        if not isinstance(col, Mapping) or not isinstance(col.get("field"), str):
            problems.append(ConfigProblem(f"columns.{i}", f"needs a field, got {col!r}"))
            continue
        fields.append(col["field"])
        try:
            ColumnFormat.parse(str(col.get("format") or ""))
        except FormatError as exc:
            problems.append(ConfigProblem(f"columns.{i}.format", f"column {col['field']!r}: {exc}"))
        if col.get("align") not in (None, "", *ALIGNS):
            problems.append(
                ConfigProblem(f"columns.{i}.align", f"must be one of {', '.join(ALIGNS)}")
            )
    for name in cfg["totals"] or []:
        if name not in fields:
            problems.append(
                ConfigProblem("totals", f"{name!r} is not one of the columns ({', '.join(fields)})")
            )
    font = str(cfg["font"] or "")
    if font and font.lower() not in CORE_FONTS and not font.lower().endswith((".ttf", ".otf")):
        problems.append(
            ConfigProblem("font", f"{font!r}: use helvetica, times, courier or a .ttf file")
        )
    for name in cfg["group_by"] or []:
        if name in FILE_FIELDS:
            problems.append(
                ConfigProblem(
                    "group_by",
                    f"{name!r} is also a field of the output file record "
                    f"({', '.join(FILE_FIELDS)}): rename it first (transform.select)",
                )
            )
    if cfg["page_size"] not in PAGE_SIZES:
        problems.append(ConfigProblem("page_size", f"must be one of {', '.join(PAGE_SIZES)}"))
    if cfg["orientation"] not in ("portrait", "landscape"):
        problems.append(ConfigProblem("orientation", "must be portrait or landscape"))
    return problems


# -- rendering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    field: str
    title: str
    width: float
    align: str
    format: ColumnFormat


class _Document(FPDF):
    """An FPDF that draws the page label in every page's footer."""

    page_label = ""
    clean: Callable[[str], str] = staticmethod(str)

    def footer(self) -> None:
        if not self.page_label:
            return
        self.set_y(-12)
        self.set_font(size=8)
        label = self.page_label.replace("{page}", str(self.page_no()))
        self.cell(0, 5, self.clean(label.replace("{pages}", self.str_alias_nb_pages)), align="C")


def _setup_font(ctx: RunContext, pdf: _Document, font: str) -> str:
    """Register the configured font and return its family name."""
    if font.lower() in CORE_FONTS:
        pdf.clean = _latin1
        return font.lower()
    path = Path(font).expanduser() if font else DEJAVU
    if not font and not path.is_file():
        ctx.logger.warning("DejaVu Sans is not installed: Helvetica, € is written as EUR")
        pdf.clean = _latin1
        return "helvetica"
    if not path.is_file():
        raise _error(ctx, f"font: file {path} not found")
    bold = path.with_name(f"{path.stem}-Bold{path.suffix}")
    try:
        pdf.add_font("body", "", str(path))
        pdf.add_font("body", "B", str(bold if bold.is_file() else path))
    except Exception as exc:  # fontTools raises many kinds for a broken file
        raise _error(ctx, f"font: cannot load {path}: {exc}") from exc
    return "body"


def _latin1(text: str) -> str:
    return text.translate(_LATIN1_FALLBACK).encode("latin-1", "replace").decode("latin-1")


def _check_logo(ctx: RunContext, logo: str) -> Path | None:
    if not logo:
        return None
    path = Path(logo).expanduser()
    if not path.is_file():
        raise _error(ctx, f"logo: file {path} not found")
    from PIL import Image  # fpdf2 depends on Pillow

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:
        raise _error(ctx, f"logo: {path} is not a PNG or JPEG image ({exc})") from exc
    return path


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """``text`` cut with '…' so it fits into a cell of ``width`` (mm, with padding)."""
    room = width - 2 * pdf.c_margin
    if pdf.get_string_width(text) <= room:
        return text
    ellipsis = "…" if pdf.clean is str else "..."  # type: ignore[attr-defined]
    while text and pdf.get_string_width(text + ellipsis) > room:
        text = text[:-1]
    return text + ellipsis


class _Report:
    """The table being drawn: rows go in as records arrive, headings repeat on new pages."""

    def __init__(self, pdf: _Document, family: str, size: float, columns: Sequence[_Column]):
        self.pdf = pdf
        self.family = family
        self.size = size
        self.columns = columns
        self.row_h = size * 0.55
        self.shade = False

    def heading(self) -> None:
        pdf = self.pdf
        pdf.set_font(self.family, "B", self.size)
        pdf.set_fill_color(225, 229, 235)
        for col in self.columns:
            text = _fit(pdf, pdf.clean(col.title), col.width)
            pdf.cell(col.width, self.row_h + 1, text, "B", align=col.align, fill=True)
        pdf.ln()
        pdf.set_font(self.family, "", self.size)
        self.shade = False

    def row(self, cells: Sequence[str], *, bold: bool = False) -> None:
        pdf = self.pdf
        if pdf.get_y() + self.row_h > pdf.page_break_trigger:
            pdf.add_page()
            self.heading()
        if bold:
            pdf.set_font(self.family, "B", self.size)
            border: str | int = "T"
        else:
            border = 0
            pdf.set_fill_color(245, 246, 248)
        for col, text in zip(self.columns, cells, strict=True):
            fill = self.shade and not bold
            pdf.cell(
                col.width,
                self.row_h,
                _fit(pdf, pdf.clean(text), col.width),
                border,
                align=col.align,
                fill=fill,
            )
        pdf.ln()
        self.shade = not self.shade
        if bold:
            pdf.set_font(self.family, "", self.size)


def _columns(cfg: Mapping[str, Any], page_width: float) -> list[_Column]:
    specs = cfg["columns"]
    fixed = sum(float(c.get("width") or 0) for c in specs)
    free = [c for c in specs if not c.get("width")]
    share = max(page_width - fixed, 10 * len(free)) / len(free) if free else 0
    out = []
    for col in specs:
        fmt = ColumnFormat.parse(str(col.get("format") or ""))
        align = ALIGNS[col["align"]] if col.get("align") else ("R" if fmt.numeric else "L")
        out.append(
            _Column(
                col["field"],
                col.get("title") or col["field"],
                float(col.get("width") or share),
                align,
                fmt,
            )
        )
    return out


def render_pdf(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Draw every record of 'in' into one PDF; 'out' gets the file record once it exists."""
    problems = check_render(config)
    if problems:
        raise _error(ctx, "; ".join(f"{p.field}: {p.message}" for p in problems))
    cfg = {**_DEFAULTS, **config}
    return {"out": _render(ctx, cfg, inputs.get("in", ()))}


def _render(ctx: RunContext, cfg: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    """All the work happens while the executor drains 'out'.

    Without group_by every record goes into one document (made even when none came in);
    with it, a document is finished when the next group starts, so one page set is in
    memory at a time.
    """
    logo = _check_logo(ctx, str(cfg["logo"] or ""))
    group_by = list(cfg["group_by"] or [])
    doc: _Pdf | None = None
    key: Any = None
    seen: set[Any] = set()
    paths: set[Path] = set()
    rows = 0
    for batch in stream:
        ctx.check_cancelled()
        done: Batch = []
        for record in batch:
            if group_by:
                values = {name: record.get(name) for name in group_by}
                group = _group_key(values)
                if doc is None or group != key:
                    if doc is not None:
                        done.append(doc.finish())
                    if group in seen:
                        raise _error(
                            ctx,
                            f"group_by: the group {values} came again after other groups; "
                            f"sort the records by {', '.join(group_by)} first",
                        )
                    seen.add(group)
                    key = group
                    doc = _Pdf(ctx, cfg, logo, record, values, paths)
            elif doc is None:
                doc = _Pdf(ctx, cfg, logo, record, {}, paths)
            if doc.add(record):
                rows += 1
        ctx.progress(len(batch))
        ctx.status(f"{rows} rows, {len(seen) or 1} documents")
        if done:
            yield done
    if doc is None and not group_by:
        doc = _Pdf(ctx, cfg, logo, {}, {}, paths)
    ctx.status("")
    if doc is not None:
        yield [doc.finish()]


def _group_key(values: Mapping[str, Any]) -> Any:
    key = tuple(values.values())
    try:
        hash(key)
    except TypeError:  # a list or dict value: compare by its text
        return repr(key)
    return key


class _Pdf:
    """One document being drawn: opened with its first record, finished into a file."""

    def __init__(
        self,
        ctx: RunContext,
        cfg: Mapping[str, Any],
        logo: Path | None,
        first: Mapping[str, Any],
        group: Mapping[str, Any],
        taken: set[Path],
    ) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.group = dict(group)
        pdf = _Document(
            orientation="L" if cfg["orientation"] == "landscape" else "P",
            unit="mm",
            format=cfg["page_size"] if cfg["page_size"] != "letter" else "Letter",
        )
        family = _setup_font(ctx, pdf, str(cfg["font"] or ""))
        pdf.page_label = str(cfg["page_label"] or "")
        pdf.set_margins(15, 15, 15)
        pdf.set_auto_page_break(False, margin=18)
        self.columns = _columns(cfg, pdf.epw)
        self.report = _Report(pdf, family, float(cfg["font_size"]), self.columns)
        self.formats = [(c.field, c.format) for c in self.columns]
        self.totals: dict[str, Decimal] = {name: Decimal(0) for name in cfg["totals"] or []}
        self.pdf = pdf
        self.rows = 0
        try:
            path_text = _fill(Template.parse(cfg["path"]), first, "path")
            title = _fill(Template.parse(str(cfg["title"] or "")), first, "title")
            header = [
                (
                    str(h.get("label") or ""),
                    _fill(
                        Template.parse(str(h.get("value") or "")),
                        first,
                        f"header_fields.{i}.value",
                    ),
                )
                for i, h in enumerate(cfg["header_fields"] or [])
            ]
        except _MissingField as exc:
            raise _error(ctx, str(exc)) from None
        pdf.set_title(title)
        final = Path(os.path.abspath(ctx.resolve_path(path_text)))
        if final.is_dir():
            raise _error(ctx, f"path: {final} is a folder")
        if not cfg["overwrite"] and os.path.lexists(final):
            raise _error(ctx, f"path: {final} already exists and overwrite is off")
        if final in taken:
            # two groups, one file: the second would silently replace the first
            raise _error(
                ctx,
                f"path: {final} is already the document of another group; put a group "
                "field into the path, e.g. '{" + next(iter(group), "field") + "}'",
            )
        taken.add(final)
        self.final = final
        pdf.add_page()
        _draw_top(
            pdf, family, float(cfg["font_size"]), title, header, logo, float(cfg["logo_height"])
        )
        self.report.heading()

    def add(self, record: Mapping[str, Any]) -> bool:
        """Draw one record as a table row; False when it was rejected."""
        try:
            cells = [fmt(record.get(field)) for field, fmt in self.formats]
            amounts = [(name, _amount(record.get(name))) for name in self.totals]
        except (ValueError, TypeError, ArithmeticError) as exc:
            self.ctx.reject(record, _bad_value(record, self.formats, self.totals, exc))
            return False
        for name, amount in amounts:
            self.totals[name] += amount
        self.report.row(cells)
        self.rows += 1
        return True

    def finish(self) -> dict[str, Any]:
        """Totals row, then the file (written atomically); its record for 'out'."""
        totals, columns = self.totals, self.columns
        if totals:
            by_field = dict(self.formats)
            cells = [
                by_field[c.field](totals[c.field]) if c.field in totals else "" for c in columns
            ]
            if columns[0].field not in totals:
                cells[0] = str(self.cfg["totals_label"] or "")
            self.report.row(cells, bold=True)
        pages = self.pdf.page_no()
        data = bytes(self.pdf.output())
        final = self.final
        _write_atomic(self.ctx, final, data, bool(self.cfg["overwrite"]))
        return {
            **self.group,
            "path": str(final),
            "name": final.name,
            "size": len(data),
            "pages": pages,
            "rows": self.rows,
            "sha256": hashlib.sha256(data).hexdigest(),
        }


class _MissingField(LookupError):
    pass


def _fill(template: Template, record: Mapping[str, Any], where: str) -> str:
    missing = [f for f in template.fields if f not in record]
    if missing:
        have = ", ".join(record) or "no records came in"
        raise _MissingField(f"{where}: field {missing[0]!r} is not in the first record ({have})")
    try:
        return template.render(record)
    except (ValueError, TypeError) as exc:
        raise _MissingField(f"{where}: {exc}") from None


def _amount(value: Any) -> Decimal:
    """A totals field's value as an exact Decimal (floats through their shortest repr)."""
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None


def _bad_value(
    record: Mapping[str, Any],
    formats: Sequence[tuple[str, ColumnFormat]],
    totals: Mapping[str, Decimal],
    exc: Exception,
) -> str:
    """Name the column whose value failed (the exception alone does not say which)."""
    for field, fmt in formats:
        try:
            fmt(record.get(field))
            if field in totals:
                _amount(record.get(field))
        except (ValueError, TypeError, ArithmeticError) as err:
            return f"column {field!r}: cannot show {record.get(field)!r}: {err}"
    return str(exc)


def _draw_top(
    pdf: _Document,
    family: str,
    size: float,
    title: str,
    header: Sequence[tuple[str, str]],
    logo: Path | None,
    logo_height: float,
) -> None:
    """Logo at the top right, title and label/value lines at the left, then a gap."""
    top = pdf.get_y()
    bottom = top
    if logo is not None:
        width = _logo_width(logo, logo_height)
        pdf.image(str(logo), x=pdf.w - pdf.r_margin - width, y=top, h=logo_height)
        bottom = top + logo_height
    if title:
        pdf.set_font(family, "B", size * 2)
        pdf.cell(0, size * 1.0, pdf.clean(title), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.set_font(family, "B", size + 1)  # labels are drawn bold: measure them bold
    label_w = max((pdf.get_string_width(pdf.clean(label)) for label, _ in header), default=0) + 4
    for label, value in header:
        pdf.set_font(family, "B", size + 1)
        pdf.cell(label_w, size * 0.6, pdf.clean(label))
        pdf.set_font(family, "", size + 1)
        pdf.cell(0, size * 0.6, pdf.clean(value), new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(max(pdf.get_y(), bottom) + 5)
    pdf.set_font(family, "", size)


def _logo_width(path: Path, height: float) -> float:
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
    return height * w / h


def _write_atomic(ctx: RunContext, final: Path, data: bytes, overwrite: bool) -> None:
    """Write next to ``final`` and rename, so nobody sees half a PDF under the final name."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(
            ctx, f"path: cannot create folder {final.parent}: {exc.strerror or exc}"
        ) from exc
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and os.path.lexists(final):
            raise _error(ctx, f"path: {final} already exists and overwrite is off")
        os.replace(tmp, final)
    except OSError as exc:
        raise _error(ctx, f"path: cannot write {final}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# -- declaration --------------------------------------------------------------------------

PDF_RENDER = NodeSpec(
    type="pdf.render",
    title="Render PDF",
    category="file",
    description="Draw the incoming records as a table in a PDF report: title, logo, header "
    "fields, formatted columns, totals and page numbers ('Seite 1 von 3'). When 'in' has "
    "ended, 'out' gets one record {path, name, size, pages, rows, sha256}; with 'One "
    "document per' (group_by), one PDF and one such record per group. A record whose "
    "value does not fit its column's format is a bad record (see 'On error').",
    inputs=("in",),
    outputs=("out",),
    config_schema=PDF_SCHEMA,
    run=render_pdf,
    check=check_render,
)

NODES = (PDF_RENDER,)
