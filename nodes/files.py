"""File nodes: read csv, fixed-width, json and jsonl files as record streams; write them back.

Both nodes stream batch by batch so a million-row file passes with flat memory. ``file.read``
hands every bad line to ``ctx.reject`` with file and line, so ``on_error`` decides whether a
bad line fails the node or goes to the ``error`` port. ``file.write`` writes a temporary
file next to the target and renames it only when its input ended normally: nobody ever
sees a half-written file under the final name.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import json
import os
import secrets
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from itertools import chain, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from engine.errors import NodeError
from engine.spec import Batch, ConfigProblem, Inputs, NodeSpec, Outputs, RunContext, Stream

__all__ = [
    "FILE_READ",
    "FILE_WRITE",
    "NODES",
    "READ_SCHEMA",
    "WRITE_SCHEMA",
    "check_read",
    "check_write",
    "read_file",
    "write_file",
]

READ_FORMATS = ("csv", "fixed", "json", "jsonl")
WRITE_FORMATS = ("csv", "jsonl", "json")
FIELD_TYPES = ("int", "float", "decimal", "date", "str")
_ARTICLE = {"int": "an int", "float": "a float", "decimal": "a decimal", "date": "a date"}
# csv.reader pulls lines through chain(); one readlines() call per ~64 KB keeps that in C.
_CHUNK_HINT = 1 << 16
# German-style numbers: "." groups thousands and is dropped, "," is the decimal point.
_COMMA_DECIMAL = str.maketrans({".": None, ",": "."})
_ENCODING_EXAMPLES = ["utf-8", "utf-8-sig", "cp1252", "latin-1", "cp850", "utf-16"]

# -- schemas ------------------------------------------------------------------------------

_FIXED_COLUMN = {
    "type": "object",
    "title": "Fixed-width column",
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "title": "Name",
            "description": "Field name in the records.",
        },
        "start": {
            "type": "integer",
            "minimum": 1,
            "title": "Start",
            "description": "1-based position of the first character; leave out to "
            "start right after the previous column.",
        },
        "width": {
            "type": "integer",
            "minimum": 1,
            "title": "Width",
            "description": "Number of characters.",
        },
    },
    "required": ["name", "width"],
    "additionalProperties": False,
}

READ_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Read file",
    "additionalProperties": False,
    "required": [],
    "properties": {
        "path": {
            "type": "string",
            "title": "Path",
            "default": "",
            "description": "File or glob pattern, e.g. 'exports/sales_*.csv'. '~' is expanded; "
            "relative paths are relative to the working directory; several matches are read "
            "in sorted order. Leave empty when the 'in' port is connected: then the file "
            "named by each incoming record's 'path' field is read.",
        },
        "format": {
            "type": "string",
            "enum": list(READ_FORMATS),
            "default": "csv",
            "title": "Format",
            "description": "csv: delimited text; fixed: fixed-width columns; jsonl: one JSON "
            "object per line; json: a top-level array of objects (loaded into memory whole, "
            "so use jsonl for big files). csv, fixed and jsonl are streamed.",
        },
        "encoding": {
            "type": "string",
            "minLength": 1,
            "default": "utf-8",
            "examples": _ENCODING_EXAMPLES,
            "title": "Encoding",
            "description": "Text encoding of the file; Windows/ERP exports are often cp1252. "
            "A UTF-8 byte order mark is dropped.",
        },
        "delimiter": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1,
            "default": ",",
            "examples": [",", ";", "\t", "|"],
            "title": "Delimiter",
            "description": "csv only: the character between fields.",
        },
        "quotechar": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1,
            "default": '"',
            "title": "Quote character",
            "description": "csv only: the character that quotes fields containing the "
            "delimiter or line breaks.",
        },
        "header": {
            "type": "boolean",
            "default": True,
            "title": "Header line",
            "description": "csv only: the first line (after skipped lines) holds the field "
            "names. With 'columns' given as well, the header line is skipped and the "
            "names from 'columns' are used.",
        },
        "columns": {
            "type": "array",
            "default": [],
            "title": "Columns",
            "description": "csv: field names for a file without header line (or to rename "
            "the header's fields). fixed: the columns as {name, width} (one after the other) "
            "or {name, start, width} with a 1-based start.",
            "items": {"anyOf": [{"type": "string", "minLength": 1}, _FIXED_COLUMN]},
        },
        "types": {
            "type": "object",
            "default": {},
            "title": "Field types",
            "description": "Convert fields: field name → int, float, decimal, date or str. "
            "Empty values become null; a value that does not convert makes its line bad.",
            "additionalProperties": {"type": "string", "enum": list(FIELD_TYPES)},
        },
        "decimal_separator": {
            "type": "string",
            "enum": [".", ","],
            "default": ".",
            "title": "Decimal separator",
            "description": "',' for German numbers like '1.234,56' (the '.' thousands "
            "separator is removed).",
        },
        "date_format": {
            "type": "string",
            "default": "",
            "examples": ["%d.%m.%Y", "%Y%m%d", "%m/%d/%Y"],
            "title": "Date format",
            "description": "strptime format of 'date' fields, e.g. '%d.%m.%Y'; empty means "
            "ISO (2024-01-31).",
        },
        "skip_lines": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "title": "Skip lines",
            "description": "Lines to skip at the top of each file, before the header.",
        },
        "strip": {
            "type": "boolean",
            "default": True,
            "title": "Strip padding",
            "description": "fixed only: remove the blanks that pad each column.",
        },
        "add_source": {
            "type": "boolean",
            "default": False,
            "title": "Add source",
            "description": "Add '_file' and '_line' (json: '_item') to every record.",
        },
    },
}

WRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Write file",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "title": "Path",
            "description": "File to write; '~' is expanded, relative paths are relative to "
            "the working directory, missing folders are created.",
        },
        "format": {
            "type": "string",
            "enum": list(WRITE_FORMATS),
            "default": "csv",
            "title": "Format",
            "description": "csv: delimited text; jsonl: one JSON object per line; json: one "
            "array of objects (written as a stream).",
        },
        "encoding": {
            "type": "string",
            "minLength": 1,
            "default": "utf-8",
            "examples": _ENCODING_EXAMPLES,
            "title": "Encoding",
            "description": "Text encoding; 'utf-8-sig' adds the byte order mark Excel "
            "wants. A csv record with a character the encoding cannot hold is a bad record.",
        },
        "delimiter": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1,
            "default": ",",
            "examples": [",", ";", "\t", "|"],
            "title": "Delimiter",
            "description": "csv only: the character between fields.",
        },
        "header": {
            "type": "boolean",
            "default": True,
            "title": "Header line",
            "description": "csv only: write the column names as the first line.",
        },
        "columns": {
            "type": "array",
            "default": [],
            "items": {"type": "string", "minLength": 1},
            "title": "Columns",
            "description": "Fields to write, in this order. Empty: csv uses the fields of "
            "the first record; json/jsonl write every record as it is.",
        },
        "decimal_separator": {
            "type": "string",
            "enum": [".", ","],
            "default": ".",
            "title": "Decimal separator",
            "description": "csv only: ',' writes 1234,56 (German).",
        },
        "date_format": {
            "type": "string",
            "default": "",
            "examples": ["%d.%m.%Y", "%Y%m%d"],
            "title": "Date format",
            "description": "strftime format for dates and timestamps; empty means ISO.",
        },
        "overwrite": {
            "type": "boolean",
            "default": True,
            "title": "Overwrite",
            "description": "Replace an existing file. Off: the node fails if the file exists.",
        },
        "extra_fields": {
            "type": "string",
            "enum": ["ignore", "error"],
            "default": "ignore",
            "title": "Extra fields",
            "description": "What to do with record fields that are not among the columns: "
            "ignore drops them; error makes the record bad (see 'On error').",
        },
    },
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: p["default"] for k, p in schema["properties"].items() if "default" in p}


_READ_DEFAULTS = _defaults(READ_SCHEMA)
_WRITE_DEFAULTS = _defaults(WRITE_SCHEMA)


def _error(ctx: RunContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


# -- config checks ------------------------------------------------------------------------


def _check_common(cfg: Mapping[str, Any], problems: list[ConfigProblem]) -> None:
    try:
        codecs.lookup(str(cfg["encoding"]))
    except LookupError:
        problems.append(ConfigProblem("encoding", f"unknown encoding {cfg['encoding']!r}"))
    delimiter = cfg["delimiter"]
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        problems.append(ConfigProblem("delimiter", f"must be one character, not {delimiter!r}"))
    if cfg["decimal_separator"] not in (".", ","):
        problems.append(ConfigProblem("decimal_separator", "must be '.' or ','"))


def check_read(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of a file.read config (what the JSON Schema cannot express)."""
    cfg = {**_READ_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    fmt = cfg["format"]
    if fmt not in READ_FORMATS:
        problems.append(ConfigProblem("format", f"must be one of {', '.join(READ_FORMATS)}"))
    _check_common(cfg, problems)
    quotechar = cfg["quotechar"]
    if not isinstance(quotechar, str) or len(quotechar) != 1:
        problems.append(ConfigProblem("quotechar", f"must be one character, not {quotechar!r}"))
    types = cfg["types"] or {}
    for name, kind in types.items():
        if kind not in FIELD_TYPES:
            problems.append(
                ConfigProblem(
                    f"types.{name}", f"unknown type {kind!r} (use {', '.join(FIELD_TYPES)})"
                )
            )
    columns = cfg["columns"] or []
    if fmt == "fixed":
        if not columns:
            problems.append(
                ConfigProblem(
                    "columns",
                    "fixed-width files need columns as {name, width} or {name, start, width}",
                )
            )
        names = []
        for i, col in enumerate(columns):
            ok = (
                isinstance(col, Mapping)
                and isinstance(col.get("name"), str)
                and _positive(col.get("width"))
                and (col.get("start") is None or _positive(col.get("start")))
            )
            if not ok:
                problems.append(
                    ConfigProblem(
                        f"columns.{i}", f"needs a name and a width >= 1 (start >= 1), got {col!r}"
                    )
                )
            else:
                names.append(col["name"])
        problems += _name_problems(names)
        problems += [
            ConfigProblem(f"types.{n}", f"{n!r} is not one of the columns")
            for n in types
            if names and n not in names
        ]
    elif fmt == "csv":
        if not cfg["header"] and not columns:
            problems.append(ConfigProblem("columns", "header is off: list the column names"))
        if not all(isinstance(c, str) and c for c in columns):
            problems.append(ConfigProblem("columns", "csv columns are field names (strings)"))
        else:
            problems += _name_problems(columns)
    skip = cfg["skip_lines"]
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        problems.append(ConfigProblem("skip_lines", f"must be a whole number >= 0, not {skip!r}"))
    return problems


def check_write(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of a file.write config (what the JSON Schema cannot express)."""
    cfg = {**_WRITE_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    if not cfg.get("path"):
        problems.append(ConfigProblem("path", "give the file to write"))
    if cfg["format"] not in WRITE_FORMATS:
        problems.append(ConfigProblem("format", f"must be one of {', '.join(WRITE_FORMATS)}"))
    if cfg["extra_fields"] not in ("ignore", "error"):
        problems.append(ConfigProblem("extra_fields", "must be 'ignore' or 'error'"))
    _check_common(cfg, problems)
    columns = cfg["columns"] or []
    if not all(isinstance(c, str) and c for c in columns):
        problems.append(ConfigProblem("columns", "columns are field names (strings)"))
    else:
        problems += _name_problems(columns)
    return problems


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _name_problems(names: Sequence[str]) -> list[ConfigProblem]:
    twice = sorted({n for n in names if names.count(n) > 1})
    return [ConfigProblem("columns", f"column {n!r} is listed twice") for n in twice]


def _raise_problems(ctx: RunContext, problems: list[ConfigProblem]) -> None:
    if problems:
        raise _error(ctx, "; ".join(f"{p.field}: {p.message}" for p in problems))


# -- value converters ---------------------------------------------------------------------


def _text_converter(kind: str, decimal_separator: str, date_format: str) -> Callable[[str], Any]:
    """A str -> value converter; raises ValueError/ArithmeticError on bad text."""
    comma = decimal_separator == ","
    if kind == "int":
        return (lambda s: int(s.translate(_COMMA_DECIMAL))) if comma else int
    if kind == "float":
        return (lambda s: float(s.translate(_COMMA_DECIMAL))) if comma else float
    if kind == "decimal":
        return (lambda s: Decimal(s.translate(_COMMA_DECIMAL))) if comma else Decimal
    if kind == "date":
        # dates repeat a lot in exports and strptime is slow: cache per column
        if date_format:
            parse = datetime.strptime

            @lru_cache(maxsize=4096)
            def to_date(s: str) -> date:
                return parse(s.strip(), date_format).date()
        else:

            @lru_cache(maxsize=4096)
            def to_date(s: str) -> date:
                return date.fromisoformat(s.strip())

        return to_date
    return str


def _expected(kind: str, date_format: str) -> str:
    if kind == "date":
        return f"a date (expected {date_format or 'YYYY-MM-DD'})"
    return _ARTICLE.get(kind, kind)


def _json_coercer(kind: str, text: Callable[[str], Any]) -> Callable[[Any], Any]:
    """Convert a JSON value: strings as text, numbers only where no precision is lost."""

    def coerce(value: Any) -> Any:
        if value is None:
            return None
        if kind == "str":
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if isinstance(value, str):
            return None if not value or value.isspace() else text(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "decimal":
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        raise ValueError(value)

    return coerce


@dataclass(frozen=True)
class _Typed:
    """One field with a type conversion."""

    index: int
    name: str
    convert: Callable[[Any], Any]
    expected: str


def _compile_records(
    exprs: Sequence[str], names: Sequence[str], convert: Mapping[int, Callable[[Any], Any]]
) -> Callable[[Iterable[Any]], Batch]:
    """Build ``rows -> [record]`` as one list comprehension with a dict display per row.

    About 25% faster than dict(zip()) plus per-field conversion. The generated source holds
    only integers and fixed text (``r[3]``, ``r[0:10].strip()``); field names and
    converters are passed in as arguments, so data never becomes code.
    """
    items = ", ".join(
        f"k{j}: c{j}({e})" if j in convert else f"k{j}: {e}" for j, e in enumerate(exprs)
    )
    keys = [f"k{j}" for j in range(len(names))]
    convs = [f"c{j}" for j in sorted(convert)]
    source = (
        f"def make({', '.join([*keys, *convs])}):\n"
        f"    return lambda rows: [{{{items}}} for r in rows]\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<file.read records>", "exec"), namespace)
    return namespace["make"](*names, *(convert[j] for j in sorted(convert)))


@dataclass
class _Builder:
    """Turns parsed rows into typed records; bad values are collected, not raised."""

    fast: Callable[[Iterable[Any]], Batch]
    plain: Callable[[Iterable[Any]], Batch]
    typed: tuple[_Typed, ...]

    @classmethod
    def create(
        cls, exprs: Sequence[str], names: Sequence[str], typed: tuple[_Typed, ...]
    ) -> _Builder:
        plain = _compile_records(exprs, names, {})
        convert = {t.index: t.convert for t in typed}
        fast = _compile_records(exprs, names, convert) if typed else plain
        return cls(fast, plain, typed)

    def build(
        self, rows: list[Any], bad: dict[int, str], index: list[int] | None
    ) -> tuple[Batch, list[int] | None]:
        """Records for ``rows``; rows whose values do not convert go into ``bad``.

        ``index`` maps a row to its position in the batch as read (None: the same);
        returns the records and that mapping for the records kept.
        """
        try:
            return self.fast(rows), index
        except (ValueError, ArithmeticError):
            pass  # an empty or bad value somewhere in the batch: convert field by field
        records = self.plain(rows)
        failed: dict[int, str] = {}
        for t in self.typed:
            name, convert = t.name, t.convert
            values = list(map(itemgetter(name), records))
            try:
                converted = list(map(convert, values))
            except (ValueError, ArithmeticError):
                converted = []
                for i, text in enumerate(values):
                    if not text or text.isspace():
                        converted.append(None)
                        continue
                    try:
                        converted.append(convert(text))
                    except (ValueError, ArithmeticError):
                        converted.append(None)
                        failed.setdefault(i, f"field {name!r}: {text!r} is not {t.expected}")
            for record, value in zip(records, converted, strict=True):
                record[name] = value
        if not failed:
            return records, index
        positions = index if index is not None else range(len(records))
        for i, message in failed.items():
            bad[positions[i]] = message
        kept = [i for i in range(len(records)) if i not in failed]
        return [records[i] for i in kept], [positions[i] for i in kept]


# -- file.read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadOptions:
    path: str
    format: str
    encoding: str
    delimiter: str
    quotechar: str
    header: bool
    columns: tuple[Any, ...]
    types: Mapping[str, str]
    decimal_separator: str
    date_format: str
    skip_lines: int
    strip: bool
    add_source: bool

    @property
    def open_encoding(self) -> str:
        # utf-8-sig reads plain UTF-8 too and keeps a BOM out of the first header name
        return "utf-8-sig" if codecs.lookup(self.encoding).name == "utf-8" else self.encoding

    def typed(self, names: Sequence[str]) -> tuple[_Typed, ...]:
        return tuple(
            _Typed(
                j,
                name,
                _text_converter(self.types[name], self.decimal_separator, self.date_format),
                _expected(self.types[name], self.date_format),
            )
            for j, name in enumerate(names)
            if self.types.get(name, "str") != "str"
        )


def read_file(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Stream the records of the configured files, or of the files named on the 'in' port."""
    _raise_problems(ctx, check_read(config))
    cfg = {**_READ_DEFAULTS, **config}
    opts = _ReadOptions(
        path=cfg["path"] or "",
        format=cfg["format"],
        encoding=cfg["encoding"],
        delimiter=cfg["delimiter"],
        quotechar=cfg["quotechar"],
        header=bool(cfg["header"]),
        columns=tuple(cfg["columns"] or ()),
        types=dict(cfg["types"] or {}),
        decimal_separator=cfg["decimal_separator"],
        date_format=cfg["date_format"] or "",
        skip_lines=cfg["skip_lines"],
        strip=bool(cfg["strip"]),
        add_source=bool(cfg["add_source"]),
    )
    source = inputs.get("in")
    if source is not None:
        return {"out": _read_named(ctx, opts, source)}
    if not opts.path:
        raise _error(
            ctx,
            "path: give a file or glob pattern, or connect the 'in' port to "
            "records whose 'path' field names the file",
        )
    return {"out": _read_matches(ctx, opts)}


def _read_matches(ctx: RunContext, opts: _ReadOptions) -> Iterator[Batch]:
    for path in _matching_files(ctx, opts.path):
        yield from _read_one(ctx, opts, path)


def _read_named(ctx: RunContext, opts: _ReadOptions, source: Stream) -> Iterator[Batch]:
    """Read the file each incoming record names (how file-drop triggers feed this node)."""
    for batch in source:
        for record in batch:
            value = record.get("path")
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                ctx.reject(record, "input record has no 'path' field naming a file to read")
                continue
            # a dropped file's name is literal: "[1].csv" is not a pattern
            path = ctx.resolve_path(os.fspath(value))
            if not path.is_file():
                ctx.reject(record, f"file not found: {path}")
                continue
            yield from _read_one(ctx, opts, path)


def _matching_files(ctx: RunContext, pattern: str) -> list[Path]:
    path = ctx.resolve_path(pattern)
    text = str(path)
    where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
    if glob.escape(text) != text and not path.is_file():
        found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not found:
            raise _error(ctx, f"path: no file matches {text!r}{where}")
        return [Path(p) for p in found]
    if path.is_dir():
        raise _error(ctx, f"path: {text} is a folder; use a pattern like '{text}/*.csv'")
    if not path.is_file():
        raise _error(ctx, f"path: file not found: {text}{where}")
    return [path]


def _read_one(ctx: RunContext, opts: _ReadOptions, path: Path) -> Iterator[Batch]:
    name = str(path)
    try:
        handle = open(path, encoding=opts.open_encoding, newline="")  # noqa: SIM115
    except OSError as exc:
        raise _error(ctx, f"path: cannot open {name}: {exc.strerror or exc}") from exc
    with handle:
        try:
            yield from _READERS[opts.format](ctx, opts, name, handle)
        except UnicodeDecodeError as exc:
            line = _undecodable_line(path, opts.open_encoding)
            at = f" line {line}" if line else ""
            raise _error(
                ctx,
                f"{name}{at}: cannot be decoded as {opts.encoding} "
                f"({exc.reason}); set 'encoding' to the file's encoding "
                "(Windows exports are often cp1252)",
            ) from exc


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """The 1-based line holding the first undecodable bytes (only called on error)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 0
    with open(path, "rb") as raw:
        for line, data in enumerate(raw, 1):
            try:
                decoder.decode(data)
            except UnicodeDecodeError:
                return line
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line
    return None


def _positions(index: list[int] | None, records: Batch) -> Iterable[int]:
    """Each record's row position in the batch as read."""
    return range(len(records)) if index is None else index


def _reject_lines(
    ctx: RunContext,
    name: str,
    bad: Mapping[int, str],
    spots: Sequence[tuple[int, str]] | Mapping[int, tuple[int, str]],
) -> None:
    """Hand each bad row to ctx.reject; ``spots`` gives its (line number, raw text)."""
    for i in sorted(bad):
        line, raw = spots[i]
        ctx.reject({"_file": name, "_line": line, "_raw": raw}, f"{name} line {line}: {bad[i]}")


def _add_source(records: Batch, name: str, lines: Iterable[int]) -> None:
    for record, line in zip(records, lines, strict=True):
        record["_file"] = name
        record["_line"] = line


def _emit(ctx: RunContext, records: Batch) -> Iterator[Batch]:
    ctx.check_cancelled()
    if records:
        ctx.progress(len(records))
        yield records


def _read_csv(ctx: RunContext, opts: _ReadOptions, name: str, f: IO[str]) -> Iterator[Batch]:
    for _ in range(opts.skip_lines):
        if not f.readline():
            return
    # Keep the raw lines of the current batch (whole readlines() chunks) so a bad record
    # can be reported with its exact text and line without slowing the good ones down.
    chunks: deque[tuple[int, list[str]]] = deque()

    def feed() -> Iterator[list[str]]:
        first = 0
        while lines := f.readlines(_CHUNK_HINT):
            chunks.append((first, lines))
            first += len(lines)
            yield lines

    dialect = {"delimiter": opts.delimiter, "quotechar": opts.quotechar}
    reader = csv.reader(chain.from_iterable(feed()), **dialect)
    offset = opts.skip_lines
    try:
        names = _csv_names(ctx, opts, name, reader)
        if names is None:
            return
        builder = _Builder.create([f"r[{j}]" for j in range(len(names))], names, opts.typed(names))
        width, size = len(names), ctx.batch_size
        start = reader.line_num
        while True:
            while chunks and chunks[0][0] + len(chunks[0][1]) <= start:
                chunks.popleft()
            rows = list(islice(reader, size))
            if not rows:
                return
            end, count = reader.line_num, len(rows)
            bad: dict[int, str] = {}
            index: list[int] | None = None
            if not all(map(width.__eq__, map(len, rows))):
                index, good = [], []
                for i, row in enumerate(rows):
                    if len(row) == width:
                        index.append(i)
                        good.append(row)
                    elif row:  # a blank line is no record and no error
                        bad[i] = f"expected {width} fields, got {len(row)}"
                rows = good
            records, index = builder.build(rows, bad, index)
            # end - start == count: no record spans lines, so row i is line start + i + 1
            spots = None
            if bad or (opts.add_source and end - start != count):
                spots = _locate_csv(_span(chunks, start, end), dialect, offset + start)
                _reject_lines(ctx, name, bad, spots)
            if opts.add_source:
                positions = _positions(index, records)
                _add_source(
                    records,
                    name,
                    [spots[i][0] for i in positions]
                    if spots
                    else [offset + start + i + 1 for i in positions],
                )
            start = end
            yield from _emit(ctx, records)
    except csv.Error as exc:
        raise _error(ctx, f"{name} line {offset + reader.line_num}: {exc}") from exc


def _csv_names(ctx: RunContext, opts: _ReadOptions, name: str, reader: Any) -> list[str] | None:
    names = list(opts.columns)
    if opts.header:
        header = next((row for row in reader if row), None)
        if header is None:
            return None  # an empty file has no records
        header = [h.strip() for h in header]
        if not names:
            names = header
        elif len(names) != len(header):
            raise _error(
                ctx,
                f"columns: {len(names)} names given, but the header of {name} "
                f"has {len(header)} fields ({', '.join(header)})",
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _error(
            ctx,
            f"{name}: column {twice[0]!r} appears twice in the header; "
            "give unique names in 'columns'",
        )
    unknown = [n for n in opts.types if n not in names]
    if unknown:
        raise _error(
            ctx,
            f"types: field {unknown[0]!r} is not a column of {name} (columns: {', '.join(names)})",
        )
    return names


def _span(chunks: Iterable[tuple[int, list[str]]], lo: int, hi: int) -> list[str]:
    """Raw lines with 0-based numbers lo..hi-1 from the kept chunks."""
    out: list[str] = []
    for first, lines in chunks:
        a, b = max(lo - first, 0), min(hi - first, len(lines))
        if a < b:
            out.extend(lines[a:b])
    return out


def _locate_csv(lines: list[str], dialect: Mapping[str, str], base: int) -> list[tuple[int, str]]:
    """(line number, raw text) of every record in ``lines``: parse them again, one by one."""
    reader = csv.reader(lines, **dialect)
    spots: list[tuple[int, str]] = []
    before = 0
    for _row in reader:
        after = reader.line_num
        spots.append((base + before + 1, "".join(lines[before:after]).rstrip("\r\n")))
        before = after
    return spots


def _read_fixed(ctx: RunContext, opts: _ReadOptions, name: str, f: IO[str]) -> Iterator[Batch]:
    names: list[str] = []
    exprs: list[str] = []
    need = pos = 0
    for col in opts.columns:
        # int(): these numbers become source text in _compile_records, nothing else may
        start = int(col["start"]) - 1 if col.get("start") is not None else pos
        pos = start + int(col["width"])
        need = max(need, pos)
        names.append(col["name"])
        exprs.append(f"r[{start}:{pos}].strip()" if opts.strip else f"r[{start}:{pos}]")
    builder = _Builder.create(exprs, names, opts.typed(names))
    base = 0
    for _ in range(opts.skip_lines):
        if not f.readline():
            return
        base += 1
    while raw := list(islice(f, ctx.batch_size)):
        lines = list(map(str.rstrip, raw, repeat("\r\n")))
        bad: dict[int, str] = {}
        index: list[int] | None = None
        rows = lines
        if min(map(len, lines)) < need:
            index, rows = [], []
            for i, line in enumerate(lines):
                if len(line) >= need:
                    index.append(i)
                    rows.append(line)
                elif line and not line.isspace():
                    bad[i] = f"line is {len(line)} characters long, the columns need {need}"
        records, index = builder.build(rows, bad, index)
        _reject_lines(ctx, name, bad, {i: (base + i + 1, lines[i]) for i in bad})
        if opts.add_source:
            _add_source(records, name, [base + i + 1 for i in _positions(index, records)])
        base += len(raw)
        yield from _emit(ctx, records)


def _read_jsonl(ctx: RunContext, opts: _ReadOptions, name: str, f: IO[str]) -> Iterator[Batch]:
    typed = _json_typed(opts)
    loads = json.loads
    base = 0
    for _ in range(opts.skip_lines):
        if not f.readline():
            return
        base += 1
    while raw := list(islice(f, ctx.batch_size)):
        bad: dict[int, str] = {}
        index: list[int] | None = None
        try:
            records = list(map(loads, raw))
            ok = all(map(isinstance, records, repeat(dict)))
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            index, records = [], []
            for i, line in enumerate(raw):
                if not line or line.isspace():
                    continue
                try:
                    value = loads(line)
                except (ValueError, RecursionError) as exc:
                    detail = (
                        f"{exc.msg} at column {exc.colno}"
                        if isinstance(exc, json.JSONDecodeError)
                        else str(exc)
                    )
                    bad[i] = f"invalid JSON: {detail}"
                    continue
                if isinstance(value, dict):
                    index.append(i)
                    records.append(value)
                else:
                    bad[i] = f"expected a JSON object, got {type(value).__name__}"
        if typed:
            records, index = _coerce_json(records, typed, bad, index)
        _reject_lines(ctx, name, bad, {i: (base + i + 1, raw[i].rstrip("\r\n")) for i in bad})
        if opts.add_source:
            _add_source(records, name, [base + i + 1 for i in _positions(index, records)])
        base += len(raw)
        yield from _emit(ctx, records)


def _read_json(ctx: RunContext, opts: _ReadOptions, name: str, f: IO[str]) -> Iterator[Batch]:
    for _ in range(opts.skip_lines):
        f.readline()
    try:
        data = json.load(f)
    except json.JSONDecodeError as exc:
        raise _error(
            ctx,
            f"{name} line {exc.lineno + opts.skip_lines} column {exc.colno}: "
            f"invalid JSON: {exc.msg}",
        ) from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise _error(ctx, f"{name}: expected a JSON array of objects, got {type(data).__name__}")
    typed = _json_typed(opts)
    size = ctx.batch_size
    for first in range(0, len(data), size):
        items = data[first : first + size]
        bad: dict[int, str] = {}
        index: list[int] | None = None
        records: Batch = items
        if not all(map(isinstance, items, repeat(dict))):
            index = [i for i, item in enumerate(items) if isinstance(item, dict)]
            records = [items[i] for i in index]
            bad = {
                i: f"expected a JSON object, got {type(item).__name__}"
                for i, item in enumerate(items)
                if not isinstance(item, dict)
            }
        if typed:
            records, index = _coerce_json(records, typed, bad, index)
        for i in sorted(bad):
            item = first + i + 1
            ctx.reject(
                {
                    "_file": name,
                    "_item": item,
                    "_raw": json.dumps(items[i], ensure_ascii=False, default=str),
                },
                f"{name} item {item}: {bad[i]}",
            )
        if opts.add_source:
            for record, i in zip(records, _positions(index, records), strict=True):
                record["_file"] = name
                record["_item"] = first + i + 1
        yield from _emit(ctx, records)


def _json_typed(opts: _ReadOptions) -> tuple[_Typed, ...]:
    return tuple(
        _Typed(
            0,
            name,
            _json_coercer(kind, _text_converter(kind, opts.decimal_separator, opts.date_format)),
            _expected(kind, opts.date_format),
        )
        for name, kind in opts.types.items()
    )


def _coerce_json(
    records: Batch, typed: tuple[_Typed, ...], bad: dict[int, str], index: list[int] | None
) -> tuple[Batch, list[int] | None]:
    positions = index if index is not None else range(len(records))
    kept: list[int] = []
    out: Batch = []
    for i, record in enumerate(records):
        for t in typed:
            if t.name in record:
                value = record[t.name]
                try:
                    record[t.name] = t.convert(value)
                except (ValueError, ArithmeticError):
                    bad[positions[i]] = f"field {t.name!r}: {value!r} is not {t.expected}"
                    break
        else:
            kept.append(positions[i])
            out.append(record)
    return out, kept


_READERS: dict[str, Callable[[RunContext, _ReadOptions, str, IO[str]], Iterator[Batch]]] = {
    "csv": _read_csv,
    "fixed": _read_fixed,
    "jsonl": _read_jsonl,
    "json": _read_json,
}


# -- file.write ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _WriteOptions:
    path: str
    format: str
    encoding: str
    delimiter: str
    header: bool
    columns: tuple[str, ...]
    decimal_separator: str
    date_format: str
    overwrite: bool
    extra_fields: str


def write_file(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Write the 'in' stream to one file; 'out' gets {path, rows} once the file is in place."""
    _raise_problems(ctx, check_write(config))
    cfg = {**_WRITE_DEFAULTS, **config}
    opts = _WriteOptions(
        path=cfg["path"],
        format=cfg["format"],
        encoding=cfg["encoding"],
        delimiter=cfg["delimiter"],
        header=bool(cfg["header"]),
        columns=tuple(cfg["columns"] or ()),
        decimal_separator=cfg["decimal_separator"],
        date_format=cfg["date_format"] or "",
        overwrite=bool(cfg["overwrite"]),
        extra_fields=cfg["extra_fields"],
    )
    return {"out": _write(ctx, opts, inputs.get("in", ()))}


def _write(ctx: RunContext, opts: _WriteOptions, stream: Stream) -> Iterator[Batch]:
    """All the work happens while the executor drains 'out'."""
    final = Path(os.path.abspath(ctx.resolve_path(opts.path)))
    if final.is_dir():
        raise _error(ctx, f"path: {final} is a folder")
    if not opts.overwrite and os.path.lexists(final):
        raise _error(ctx, f"path: {final} already exists and overwrite is off")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(
            ctx, f"path: cannot create folder {final.parent}: {exc.strerror or exc}"
        ) from exc
    tmp, handle = _create_temp(ctx, final, opts.encoding)
    try:
        with handle:
            rows = _WRITERS[opts.format](ctx, opts, handle, stream, str(final))
            handle.flush()
            os.fsync(handle.fileno())
        _publish(ctx, tmp, final, opts.overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    yield [{"path": str(final), "rows": rows}]


def _create_temp(ctx: RunContext, final: Path, encoding: str) -> tuple[Path, IO[str]]:
    """A new hidden file next to ``final`` (same file system, so the rename is atomic)."""
    for _ in range(20):
        tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
        try:
            # 0o666 through the umask: the file gets the permissions a plain open() gives
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _error(
                ctx, f"path: cannot write in {final.parent}: {exc.strerror or exc}"
            ) from exc
        try:
            if hasattr(os, "fchmod") and final.exists():
                os.fchmod(fd, stat.S_IMODE(final.stat().st_mode))
            return tmp, open(fd, "w", encoding=encoding, newline="")
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    raise _error(ctx, f"path: cannot create a temporary file next to {final}")


def _publish(ctx: RunContext, tmp: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if the file appeared meanwhile, unlike a replace
    except FileExistsError as exc:
        raise _error(ctx, f"path: {final} already exists and overwrite is off") from exc
    except OSError:  # no hard links on this file system
        if os.path.lexists(final):
            raise _error(ctx, f"path: {final} already exists and overwrite is off") from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


class _Lines(list):  # type: ignore[type-arg]
    """A csv.writer target that collects lines; one file write per batch instead of per row."""

    write = list.append


def _row_getter(columns: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(columns) == 1:
        key = columns[0]
        return lambda record: (record[key],)
    return itemgetter(*columns)


def _json_default(date_format: str) -> Callable[[Any], Any]:
    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            if value.is_finite():
                number = float(value)
                if Decimal(repr(number)) == value:  # a JSON number when nothing is lost
                    return number
            return str(value)
        if isinstance(value, date):  # datetime too
            return value.strftime(date_format) if date_format else value.isoformat()
        if isinstance(value, time):
            return value.isoformat()
        if isinstance(value, set | frozenset | tuple):
            return list(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"a {type(value).__name__} value cannot be written as JSON")

    return default


def _csv_value(opts: _WriteOptions) -> Callable[[Any], Any]:
    sep, fmt = opts.decimal_separator, opts.date_format
    to_json = json.JSONEncoder(ensure_ascii=False, default=_json_default(fmt)).encode

    def value(v: Any) -> Any:
        if v is None or isinstance(v, str | bool | int):
            return v
        if isinstance(v, float):
            return repr(v).replace(".", sep)
        if isinstance(v, Decimal):
            return format(v, "f").replace(".", sep)
        if isinstance(v, date):  # datetime too
            return v.strftime(fmt) if fmt else v.isoformat()
        if isinstance(v, time):
            return v.isoformat()
        if isinstance(v, dict | list | tuple):
            return to_json(v)
        return v

    return value


def _without_extras(
    ctx: RunContext, batch: Batch, columns: Sequence[str], label: str, seen: int
) -> Batch:
    allowed = frozenset(columns)
    if all(map(allowed.issuperset, batch)):
        return batch
    kept: Batch = []
    for i, record in enumerate(batch):
        extra = [k for k in record if k not in allowed]
        if extra:
            ctx.reject(
                record,
                f"{label} record {seen + i + 1}: field "
                f"{', '.join(map(repr, extra))} is not among the columns "
                f"({', '.join(columns)}); set extra_fields to 'ignore' to drop it",
            )
        else:
            kept.append(record)
    return kept


def _write_csv(ctx: RunContext, opts: _WriteOptions, f: IO[str], stream: Stream, label: str) -> int:
    lines = _Lines()
    writer = csv.writer(lines, delimiter=opts.delimiter, lineterminator="\r\n")
    plain = {str, int, bool, type(None)} | ({float} if opts.decimal_separator == "." else set())
    value = _csv_value(opts)
    columns: tuple[str, ...] = opts.columns
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
    written = seen = 0

    def start() -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
        if opts.header:
            header = opts.delimiter.join(columns)
            try:
                header.encode(opts.encoding)
            except UnicodeEncodeError as exc:
                raise _error(
                    ctx, f"columns: the header {header!r} cannot be written as {opts.encoding}"
                ) from exc
            lines.clear()
            writer.writerow(columns)
            f.write(lines[0])
        return _row_getter(columns)

    for batch in stream:
        ctx.check_cancelled()
        if not batch:
            continue
        if getter is None:
            columns = columns or tuple(batch[0])
            getter = start()
        count = len(batch)
        if opts.extra_fields == "error":
            batch = _without_extras(ctx, batch, columns, label, seen)
        try:
            rows: list[Any] = list(map(getter, batch))
        except KeyError:  # a record without some column: write it empty
            rows = [tuple(map(record.get, columns)) for record in batch]
        if not set(map(type, chain.from_iterable(rows))) <= plain:
            cols = list(zip(*rows, strict=True))
            for j, col in enumerate(cols):
                if not set(map(type, col)) <= plain:
                    cols[j] = tuple(map(value, col))
            rows = list(zip(*cols, strict=True))
        lines.clear()
        writer.writerows(rows)
        try:
            f.write("".join(lines))
            written += len(rows)
        except UnicodeEncodeError:
            written += _write_encodable(
                ctx, f, lines, batch, rows, columns, opts.encoding, label, seen
            )
        seen += count
        ctx.progress(count)
    if getter is None and columns:
        start()  # no records: still write the header of the configured columns
    return written


def _write_encodable(
    ctx: RunContext,
    f: IO[str],
    lines: list[str],
    batch: Batch,
    rows: list[Any],
    columns: Sequence[str],
    encoding: str,
    label: str,
    seen: int,
) -> int:
    """Write the lines the encoding can hold; reject the records it cannot."""
    good: list[str] = []
    for i, line in enumerate(lines):
        try:
            line.encode(encoding)
        except UnicodeEncodeError as exc:
            char = exc.object[exc.start : exc.end]
            field = next(
                (
                    c
                    for c, v in zip(columns, rows[i], strict=True)
                    if v is not None and char in str(v)
                ),
                "?",
            )
            ctx.reject(
                batch[i],
                f"{label} record {seen + i + 1}: field {field!r}: "
                f"{char!r} cannot be written as {encoding}",
            )
        else:
            good.append(line)
    f.write("".join(good))
    return len(good)


def _json_parts(
    ctx: RunContext, opts: _WriteOptions, stream: Stream, label: str
) -> Iterator[list[str]]:
    """Each batch as encoded JSON texts, one per record; records that cannot be encoded
    are rejected."""
    # outside UTF encodings, \\u escapes keep every character writable
    ascii_only = not codecs.lookup(opts.encoding).name.startswith("utf")
    encode = json.JSONEncoder(
        ensure_ascii=ascii_only, allow_nan=False, default=_json_default(opts.date_format)
    ).encode
    columns = opts.columns
    seen = 0
    for batch in stream:
        ctx.check_cancelled()
        count = len(batch)
        records = batch
        if columns:
            if opts.extra_fields == "error":
                records = _without_extras(ctx, records, columns, label, seen)
            records = [{c: r.get(c) for c in columns} for r in records]
        try:
            parts = list(map(encode, records))
        except (TypeError, ValueError):
            parts = []
            for i, record in enumerate(records):
                try:
                    parts.append(encode(record))
                except (TypeError, ValueError) as exc:
                    ctx.reject(record, f"{label} record {seen + i + 1}: {exc}")
        seen += count
        ctx.progress(count)
        yield parts


def _write_jsonl(
    ctx: RunContext, opts: _WriteOptions, f: IO[str], stream: Stream, label: str
) -> int:
    written = 0
    for parts in _json_parts(ctx, opts, stream, label):
        if parts:
            f.write("\n".join(parts))
            f.write("\n")
            written += len(parts)
    return written


def _write_json(
    ctx: RunContext, opts: _WriteOptions, f: IO[str], stream: Stream, label: str
) -> int:
    written = 0
    f.write("[")
    for parts in _json_parts(ctx, opts, stream, label):
        if parts:
            f.write(("\n" if not written else ",\n") + ",\n".join(parts))
            written += len(parts)
    f.write("\n]\n" if written else "]\n")
    return written


_WRITERS: dict[str, Callable[[RunContext, _WriteOptions, IO[str], Stream, str], int]] = {
    "csv": _write_csv,
    "jsonl": _write_jsonl,
    "json": _write_json,
}


# -- declarations -------------------------------------------------------------------------

FILE_READ = NodeSpec(
    type="file.read",
    title="Read file",
    category="file",
    description="Read csv, fixed-width, json or jsonl files as records, streamed in batches. "
    "Reads the file or glob in 'path', or, when 'in' is connected, the file named by each "
    "incoming record's 'path' (e.g. from a file-drop trigger). A bad line goes to 'error' "
    "(on_error: route) with _file, _line and _raw, or fails the node naming file and line.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=READ_SCHEMA,
    run=read_file,
    check=check_read,
)

FILE_WRITE = NodeSpec(
    type="file.write",
    title="Write file",
    category="file",
    description="Write records to a csv, jsonl or json file. The file appears under its "
    "name only when all records are written (a failed or cancelled run leaves no partial "
    "file); then 'out' gets one record {path, rows}.",
    inputs=("in",),
    outputs=("out",),
    config_schema=WRITE_SCHEMA,
    run=write_file,
    check=check_write,
)

NODES = (FILE_READ, FILE_WRITE)
