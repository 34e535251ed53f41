"""The expression language of transform nodes: checked once, compiled once, run per record.

Users write small Python-like expressions (``price * markup``, ``upper(name)``,
``date(ts) >= today()``), never Python. The text is parsed with :mod:`ast`, every node is
checked against an allow-list, and the checked tree is rewritten into a plain Python
function whose globals hold only whitelisted helpers (``__builtins__`` is empty). Nothing
unchecked ever runs, and record values are only ever data.

Each expression is compiled three times. The *fast* variant uses native operators wherever
they cannot do unbounded work. The *coercing* variant routes arithmetic through helpers
that also accept Decimal/float mixes (``price * 1.19`` with a Decimal price). The *careful*
variant wraps every operation so a failure names the operator, the operand types and the
sub-expression. The fast one runs first; when it fails the coercing one runs on the same
record, and when that fails too the careful one raises the precise
:class:`ExpressionError`. All three give the same result whenever they succeed.

Example:
    >>> total = compile_expression("round(price * markup, 2)", params={"markup": 1.19})
    >>> total({"price": 10})
    11.9
    >>> sorted(total.fields)
    ['price']
"""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, DecimalException, InvalidOperation
from decimal import Overflow as DecimalOverflow
from types import MappingProxyType
from typing import Any

from engine.errors import ExpressionError

__all__ = [
    "FUNCTIONS",
    "Expression",
    "check_expression",
    "compile_expression",
    "RecordMapper",
    "compile_map",
    "MAX_EXPRESSION_LENGTH",
    "MAX_DEPTH",
    "MAX_TEXT_CONSTANT",
    "MAX_INT_CONSTANT",
    "MAX_EXPONENT",
    "MAX_INT_DIGITS",
    "MAX_ITEMS",
]

MAX_EXPRESSION_LENGTH = 20_000  # characters of expression text
MAX_DEPTH = 100  # nesting levels of the syntax tree
MAX_TEXT_CONSTANT = 10_000  # characters in one string literal
MAX_INT_CONSTANT = 10**18  # magnitude of one integer literal
MAX_EXPONENT = 1000  # |exponent| of **
MAX_INT_DIGITS = 10_000  # digits of an integer made by ** or *
MAX_ITEMS = 1_000_000  # characters/items of a text or list made by *, lpad, rpad, replace, concat

_MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))
_NUMBER_TYPES = frozenset({int, float, Decimal, bool})
_REPEATABLE = (str, bytes, list, tuple)
# Precision for round(): enough for any integer ** can make plus the digits asked for.
_ROUND_CONTEXT = Context(prec=MAX_INT_DIGITS + 250)
_MAX_ROUND_DIGITS = 100
_floor = math.floor
_POW10 = [10.0**i for i in range(_MAX_ROUND_DIGITS + 1)]
_QUANTUM = {n: Decimal((0, (1,), -n)) for n in range(-_MAX_ROUND_DIGITS, _MAX_ROUND_DIGITS + 1)}


# =========================================================================== values
def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _coerce(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Decimal and float do not mix in Python; ``price * 1.19`` must still work.

    The float goes through ``str`` so ``1.19`` becomes ``Decimal('1.19')``, not the binary
    value ``1.1899999999999999467…``.
    """
    if isinstance(a, Decimal) and isinstance(b, float):
        return a, _decimal_of(b)
    if isinstance(a, float) and isinstance(b, Decimal):
        return _decimal_of(a), b
    return None


_FLOAT_DECIMALS: dict[float, Decimal] = {}


def _decimal_of(number: float) -> Decimal:
    """Decimal of a float as written; cached because the float is usually a constant."""
    exact = _FLOAT_DECIMALS.get(number)
    if exact is None:
        exact = Decimal(repr(number))
        if number and len(_FLOAT_DECIMALS) < 4096:  # 0.0 == -0.0: keep the sign exact
            _FLOAT_DECIMALS[number] = exact
    return exact


def _too_long(count: int) -> ExpressionError:
    return ExpressionError(f"result would be too long ({count:,} items, limit {MAX_ITEMS:,})")


def _too_large() -> ExpressionError:
    return ExpressionError(f"result would be too large (more than {MAX_INT_DIGITS:,} digits)")


# =========================================================================== operators
# The core operators: correct (coercing) and bounded. A type mismatch raises TypeError;
# the careful variant turns that into a message naming the operands and the sub-expression.


def _coercing(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        try:
            return op(a, b)
        except TypeError:
            pair = _coerce(a, b)
            if pair is None:
                raise
            return op(*pair)

    return apply


_add = _coercing(operator.add)
_sub = _coercing(operator.sub)
_truediv = _coercing(operator.truediv)
_floordiv_any = _coercing(operator.floordiv)


def _floordiv(a: Any, b: Any) -> Any:
    """``//`` floors for every number type: Python's Decimal ``//`` truncates toward zero
    (``Decimal('-11.35') // 1`` is -11), which is not what the docs promise."""
    result = _floordiv_any(a, b)
    if isinstance(result, Decimal) and result.is_finite():
        remainder = _coercing(operator.sub)(a, _mul(result, b))
        if remainder and (remainder < 0) != (b < 0):
            result -= 1
    return result


def _mul(a: Any, b: Any) -> Any:
    """``*`` that cannot allocate without bound: ``'a' * 10**10`` fails before it starts."""
    ta = type(a)
    tb = type(b)
    if ta in _NUMBER_TYPES and tb in _NUMBER_TYPES:
        if ta is int and tb is int:
            if a.bit_length() + b.bit_length() > _MAX_INT_BITS:
                raise _too_large()
        elif ta is not tb and (ta is Decimal or tb is Decimal):
            pair = _coerce(a, b)
            if pair is not None:
                a, b = pair
        return a * b
    if isinstance(a, _REPEATABLE) and isinstance(b, int):
        if b > 0 and len(a) * b > MAX_ITEMS:
            raise _too_long(len(a) * b)
        return a * b
    if isinstance(b, _REPEATABLE) and isinstance(a, int):
        if a > 0 and len(b) * a > MAX_ITEMS:
            raise _too_long(len(b) * a)
        return a * b
    if isinstance(a, timedelta) or isinstance(b, timedelta):
        return a * b
    raise TypeError("unsupported operand types for *")


def _mod(a: Any, b: Any) -> Any:
    """``%`` on numbers only: on text it would be printf-style formatting."""
    ta = type(a)
    tb = type(b)
    if ta not in _NUMBER_TYPES or tb not in _NUMBER_TYPES:
        raise TypeError("'%' works on numbers only")
    if ta is not tb and (ta is Decimal or tb is Decimal):
        pair = _coerce(a, b)
        if pair is not None:
            a, b = pair
    return a % b


def _pow(a: Any, b: Any) -> Any:
    """``**`` with a bounded exponent and result: ``9**9**9`` fails at once."""
    if type(a) not in _NUMBER_TYPES or type(b) not in _NUMBER_TYPES:
        raise TypeError("'**' works on numbers only")
    if abs(b) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {_short(str(b), 20)} is too large (limit {MAX_EXPONENT})")
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and b > 1
        and abs(a) > 1
        and b * math.log10(abs(a)) >= MAX_INT_DIGITS
    ):
        raise _too_large()
    pair = _coerce(a, b)
    if pair is not None:
        a, b = pair
    result = a**b
    if isinstance(result, complex):
        raise ExpressionError("result is not a real number")
    return result


def _neg(a: Any) -> Any:
    return -a


def _pos(a: Any) -> Any:
    return +a


def _comparing(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def compare(a: Any, b: Any) -> Any:
        ta = type(a)
        tb = type(b)
        if ta is not tb and (ta is Decimal or tb is Decimal):
            pair = _coerce(a, b)
            if pair is not None:
                a, b = pair
        return op(a, b)

    return compare


_eq = _comparing(operator.eq)
_ne = _comparing(operator.ne)
_lt = _comparing(operator.lt)
_le = _comparing(operator.le)
_gt = _comparing(operator.gt)
_ge = _comparing(operator.ge)


def _in(a: Any, b: Any) -> bool:
    """Membership with the same Decimal/float equality as ``==``."""
    if isinstance(a, (Decimal, float)) and isinstance(b, (list, tuple)):
        return any(_eq(a, item) for item in b)
    return a in b


def _not_in(a: Any, b: Any) -> bool:
    return not _in(a, b)


_BINOPS: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", _add),
    ast.Sub: ("-", _sub),
    ast.Mult: ("*", _mul),
    ast.Div: ("/", _truediv),
    ast.FloorDiv: ("//", _floordiv),
    ast.Mod: ("%", _mod),
    ast.Pow: ("**", _pow),
}
_REJECTED_BINOPS = {
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.MatMult: "@",
}
_UNARYOPS: dict[type[ast.unaryop], tuple[str, Callable[[Any], Any]]] = {
    ast.USub: ("-", _neg),
    ast.UAdd: ("+", _pos),
    ast.Not: ("not", operator.not_),
}
_CMPOPS: dict[type[ast.cmpop], tuple[str, str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", "__eq", _eq),
    ast.NotEq: ("!=", "__ne", _ne),
    ast.Lt: ("<", "__lt", _lt),
    ast.LtE: ("<=", "__le", _le),
    ast.Gt: (">", "__gt", _gt),
    ast.GtE: (">=", "__ge", _ge),
    ast.In: ("in", "__in", _in),
    ast.NotIn: ("not in", "__not_in", _not_in),
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    if isinstance(exc, (OverflowError, DecimalOverflow)):
        return "number too large"
    if isinstance(exc, DecimalException):
        return "invalid decimal operation"
    return str(exc) or type(exc).__name__


def _explain_binop(symbol: str, func: Callable[[Any, Any], Any], where: str) -> Callable:
    """Wrap a core operator so every failure names the operator, operands and place."""

    def apply(a: Any, b: Any) -> Any:
        try:
            return func(a, b)
        except ExpressionError as exc:
            raise ExpressionError(f"{symbol!r}: {exc.message}{where}") from exc
        except ZeroDivisionError as exc:
            raise ExpressionError(f"division by zero{where}") from exc
        except TypeError as exc:
            hint = ""
            if symbol == "+" and (isinstance(a, str) or isinstance(b, str)):
                hint = " (use concat() to join text with other values)"
            elif symbol in ("%", "**"):
                hint = f" ({symbol!r} works on numbers only)"
            elif a is None or b is None:
                hint = " (use coalesce() for missing values)"
            raise ExpressionError(
                f"cannot apply {symbol!r} to {_type_name(a)} and {_type_name(b)}{where}{hint}"
            ) from exc
        except (ArithmeticError, ValueError, MemoryError) as exc:
            raise ExpressionError(f"{symbol!r} failed: {_describe(exc)}{where}") from exc

    return apply


def _explain_compare(symbol: str, func: Callable[[Any, Any], Any], where: str) -> Callable:
    def compare(a: Any, b: Any) -> Any:
        try:
            return func(a, b)
        except TypeError as exc:
            hint = " (use coalesce() for missing values)" if a is None or b is None else ""
            raise ExpressionError(
                f"cannot compare {_type_name(a)} and {_type_name(b)} with {symbol!r}{where}{hint}"
            ) from exc
        except (ArithmeticError, ValueError) as exc:
            raise ExpressionError(f"{symbol!r} failed: {_describe(exc)}{where}") from exc

    return compare


def _explain_unary(symbol: str, func: Callable[[Any], Any], where: str) -> Callable:
    def apply(a: Any) -> Any:
        try:
            return func(a)
        except TypeError as exc:
            raise ExpressionError(
                f"cannot apply unary {symbol!r} to {_type_name(a)}{where}"
            ) from exc
        except (ArithmeticError, ValueError) as exc:
            raise ExpressionError(f"unary {symbol!r} failed: {_describe(exc)}{where}") from exc

    return apply


def _explain_call(name: str, func: Callable[..., Any], where: str) -> Callable:
    def call(*args: Any) -> Any:
        try:
            return func(*args)
        except ExpressionError as exc:
            message = (
                exc.message if exc.message.startswith(f"{name}(") else (f"{name}(): {exc.message}")
            )
            raise ExpressionError(f"{message}{where}") from exc
        except (TypeError, ValueError, ArithmeticError, MemoryError) as exc:
            raise ExpressionError(f"{name}() failed: {_describe(exc)}{where}") from exc

    return call


def _unknown_field(name: str, record: Any) -> str:
    try:
        names = sorted(str(key) for key in record)
    except TypeError:
        return f"unknown field {name!r} (the record is a {_type_name(record)}, not a mapping)"
    if not names:
        return f"unknown field {name!r} (the record has no fields)"
    listed = ", ".join(names[:30]) + (f", … ({len(names) - 30} more)" if len(names) > 30 else "")
    return f"unknown field {name!r} (fields: {listed})"


def _get(record: Mapping[str, Any], name: str) -> Any:
    """Careful field read: a missing field is named together with the fields there are."""
    try:
        return record[name]
    except (KeyError, TypeError, IndexError):
        raise ExpressionError(_unknown_field(name, record)) from None


# =========================================================================== functions
# Every function takes and returns plain data (text, numbers, dates, lists, None); none
# accepts or returns a callable. Most return None when their first argument is None, like
# SQL NULL; coalesce(), concat(), is_empty(), min() and max() are the exceptions.


def _text(value: Any) -> str:
    """How a value reads as text (dates as ISO, Decimals without exponent)."""
    if type(value) is str:
        return value
    if isinstance(value, Decimal):
        if value.is_finite() and abs(value.adjusted()) < 40:
            return format(value, "f")
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _text_arg(value: Any, fname: str, what: str) -> str:
    if value is None:
        raise ExpressionError(f"{fname}(): {what} is None")
    return _text(value)


def _int_arg(value: Any, fname: str, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    raise ExpressionError(f"{fname}(): {what} must be a whole number, got {_type_name(value)}")


def _number_arg(value: Any, fname: str) -> int | float | Decimal:
    if isinstance(value, (int, float, Decimal)):
        return value
    raise ExpressionError(
        f"{fname}() needs a number, got {_type_name(value)} "
        "(use number() or decimal() to read text as a number)"
    )


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) == 0
    return False


_GROUPED = {
    ".": re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?"),
    ",": re.compile(r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d*)(?:,\d*)?"),
}
_SPACES = str.maketrans("", "", " \u00a0\u202f'")


def _parse_decimal(text: str, sep: str, fname: str) -> Decimal | None:
    """Read text as a number: '1234.5', '1,234.5' or, with sep ',', '1.234,5'."""
    if sep not in _GROUPED:
        raise ExpressionError(f"{fname}(): decimal separator must be '.' or ',', got {sep!r}")
    cleaned = text.strip().translate(_SPACES)
    if not cleaned:
        return None
    if sep == ".":
        if "_" not in cleaned:
            try:
                return Decimal(cleaned)
            except InvalidOperation:
                pass
        if _GROUPED["."].fullmatch(cleaned):
            return Decimal(cleaned.replace(",", ""))
    elif _GROUPED[","].fullmatch(cleaned) and any(c.isdigit() for c in cleaned):
        return Decimal(cleaned.replace(".", "").replace(",", "."))
    raise ExpressionError(f"{fname}(): cannot read {_short(text)!r} as a number")


def _fn_decimal(value: Any, sep: str = ".") -> Decimal | None:
    """decimal(x, sep='.'): exact decimal number from text, int, float or Decimal."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        return _parse_decimal(value, sep, "decimal")
    raise ExpressionError(f"decimal(): cannot make a number from {_type_name(value)}")


def _fn_number(value: Any, sep: str = ".") -> float | None:
    """number(x, sep='.'): float from text (German '1.234,56' with sep ','), int or Decimal."""
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, (int, Decimal)):
        return float(value)
    if isinstance(value, str):
        parsed = _parse_decimal(value, sep, "number")
        return None if parsed is None else float(parsed)
    raise ExpressionError(f"number(): cannot make a number from {_type_name(value)}")


def _fn_float(value: Any) -> float | None:
    """float(x): like number(x) with '.' as the decimal separator."""
    return _fn_number(value)


def _fn_int(value: Any) -> int | None:
    """int(x): whole number, cut toward zero ('12.7' → 12); '' and None → None."""
    if value is None or type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        parsed = _parse_decimal(value, ".", "int")
        if parsed is None:
            return None
        value = parsed
    if isinstance(value, Decimal):
        if value.is_finite() and value.adjusted() >= MAX_INT_DIGITS:
            raise ExpressionError(f"int(): {_short(str(value))} is too large")
        return int(value)
    if isinstance(value, float):
        return int(value)
    raise ExpressionError(f"int(): cannot make a whole number from {_type_name(value)}")


def _fn_str(value: Any) -> str | None:
    """str(x): text of a value; dates as YYYY-MM-DD, Decimals without exponent."""
    return None if value is None else _text(value)


def _is_decimal_tie(value: float, n: int) -> bool:
    """Whether the float as written (its repr) ends in a 5 right after the n-th decimal."""
    text = repr(value)
    if "e" in text or "." not in text:
        return False
    return text[-1] == "5" and len(text) - text.index(".") - 1 == n + 1


def _fn_round(value: Any, digits: Any = None) -> Any:
    """round(x, n=0): half away from zero (2.5 → 3, 2.675 → 2.68) on floats, ints, Decimals.

    Users expect spreadsheet rounding of the number as written, not banker's rounding of
    its binary value, so ties are decided on the decimal text of a float.
    """
    if type(value) is float and -1e15 < value < 1e15:  # the common case, kept short
        n = 0 if digits is None else digits
        if type(n) is int and 0 <= n <= 15:
            scaled = abs(value) * _POW10[n]
            floor = _floor(scaled)
            # Away from a .5 tie Python's correctly rounded round() gives the same result.
            if abs(scaled - floor - 0.5) > 1e-9 * (floor + 1.0) or not _is_decimal_tie(value, n):
                return round(value, n) if digits is not None else round(value)
            if floor < 2**52:  # an exact decimal tie: one step away from zero
                if digits is None:
                    return floor + 1 if value > 0 else -(floor + 1)
                return math.copysign((floor + 1) / _POW10[n], value)
    if value is None:
        return None
    n = 0 if digits is None else digits if type(digits) is int else _int_arg(digits, "round", "n")
    if not -_MAX_ROUND_DIGITS <= n <= _MAX_ROUND_DIGITS:
        raise ExpressionError(f"round(): n must be between -100 and 100, got {n}")
    if type(value) is Decimal and value.is_finite():
        rounded = value.quantize(_QUANTUM[n], ROUND_HALF_UP, _ROUND_CONTEXT)
        return rounded if digits is not None else int(rounded)
    value = _number_arg(value, "round")
    if isinstance(value, int) and n >= 0:
        return int(value)
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not exact.is_finite():
        if digits is None:
            raise ExpressionError(f"round(): cannot round {exact} to a whole number")
        return value
    rounded = exact.quantize(_QUANTUM[n], ROUND_HALF_UP, _ROUND_CONTEXT)
    if digits is None or isinstance(value, int):
        return int(rounded)
    return rounded if isinstance(value, Decimal) else float(rounded)


def _fn_abs(value: Any) -> Any:
    """abs(x): magnitude of a number."""
    return None if value is None else abs(_number_arg(value, "abs"))


def _values(name: str, values: tuple[Any, ...]) -> list[Any]:
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    return [v for v in values if v is not None]


def _fn_min(value: Any, *more: Any) -> Any:
    """min(a, b, ...) or min(list): smallest value, None values skipped."""
    present = _values("min", (value, *more))
    return min(present) if present else None


def _fn_max(value: Any, *more: Any) -> Any:
    """max(a, b, ...) or max(list): largest value, None values skipped."""
    present = _values("max", (value, *more))
    return max(present) if present else None


def _fn_upper(value: Any) -> str | None:
    """upper(s): text in capitals."""
    if type(value) is str:
        return value.upper()
    return None if value is None else _text(value).upper()


def _fn_lower(value: Any) -> str | None:
    """lower(s): text in small letters."""
    if type(value) is str:
        return value.lower()
    return None if value is None else _text(value).lower()


def _fn_trim(value: Any) -> str | None:
    """trim(s): text without leading and trailing whitespace."""
    if type(value) is str:
        return value.strip()
    return None if value is None else _text(value).strip()


def _fn_len(value: Any) -> int | None:
    """len(x): characters of text, items of a list."""
    if value is None:
        return None
    if isinstance(value, (str, list, tuple, dict)):
        return len(value)
    return len(_text(value))


def _fn_substr(value: Any, start: Any, length: Any = None) -> str | None:
    """substr(s, start, length=None): 1-based like SQL; a negative start counts from the end."""
    if value is None:
        return None
    text = _text(value)
    first = _int_arg(start, "substr", "start")
    if first == 0:
        raise ExpressionError("substr(): start is 1-based (1 is the first character)")
    begin = first - 1 if first > 0 else max(len(text) + first, 0)
    if length is None:
        return text[begin:]
    count = _int_arg(length, "substr", "length")
    if count < 0:
        raise ExpressionError(f"substr(): length must not be negative, got {count}")
    return text[begin : begin + count]


def _fn_replace(value: Any, old: Any, new: Any) -> str | None:
    """replace(s, old, new): every occurrence of old replaced by new."""
    if value is None:
        return None
    text = _text(value)
    old_text = _text_arg(old, "replace", "old")
    new_text = _text_arg(new, "replace", "new")
    hits = len(text) + 1 if old_text == "" else text.count(old_text)
    size = len(text) + hits * (len(new_text) - len(old_text))
    if size > max(MAX_ITEMS, len(text)):
        raise _too_long(size)
    return text.replace(old_text, new_text)


def _fn_coalesce(*values: Any) -> Any:
    """coalesce(a, b, ...): the first value that is not empty (None or '')."""
    for value in values:
        if not _is_empty(value):
            return value
    return None


def _fn_is_empty(value: Any) -> bool:
    """is_empty(x): True for None, '' and empty lists."""
    return _is_empty(value)


def _fn_concat(*parts: Any) -> str:
    """concat(a, b, ...): all values as one text; None counts as ''."""
    pieces = [_text(p) for p in parts if p is not None]
    size = sum(map(len, pieces))
    if size > MAX_ITEMS:
        raise _too_long(size)
    return "".join(pieces)


def _pad(name: str, value: Any, width: Any, char: Any) -> tuple[str, int, str] | None:
    if value is None:
        return None
    size = _int_arg(width, name, "width")
    if size > MAX_ITEMS:
        raise _too_long(size)
    fill = _text_arg(char, name, "char")
    if len(fill) != 1:
        raise ExpressionError(f"{name}(): char must be one character, got {_short(fill)!r}")
    return _text(value), size, fill


def _fn_lpad(value: Any, width: Any, char: Any = " ") -> str | None:
    """lpad(s, width, char=' '): s padded on the left to width (never cut)."""
    padded = _pad("lpad", value, width, char)
    return None if padded is None else padded[0].rjust(padded[1], padded[2])


def _fn_rpad(value: Any, width: Any, char: Any = " ") -> str | None:
    """rpad(s, width, char=' '): s padded on the right to width (never cut)."""
    padded = _pad("rpad", value, width, char)
    return None if padded is None else padded[0].ljust(padded[1], padded[2])


def _fn_contains(value: Any, part: Any) -> bool | None:
    """contains(s, part): whether part occurs in s."""
    if value is None:
        return None
    return _text_arg(part, "contains", "part") in _text(value)


def _fn_startswith(value: Any, prefix: Any) -> bool | None:
    """startswith(s, prefix)."""
    if value is None:
        return None
    return _text(value).startswith(_text_arg(prefix, "startswith", "prefix"))


def _fn_endswith(value: Any, suffix: Any) -> bool | None:
    """endswith(s, suffix)."""
    if value is None:
        return None
    return _text(value).endswith(_text_arg(suffix, "endswith", "suffix"))


_GERMAN_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?")


def _to_date(value: Any, fname: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        german = _GERMAN_DATE.fullmatch(text)
        try:
            if german:
                day, month, year = (int(g) for g in german.groups())
                return date(year, month, day)
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text).date()
        except ValueError:
            pass
        raise ExpressionError(
            f"{fname}(): cannot read {_short(text)!r} as a date (use YYYY-MM-DD or DD.MM.YYYY)"
        )
    raise ExpressionError(f"{fname}(): cannot make a date from {_type_name(value)}")


def _fn_date(value: Any) -> date | None:
    """date(x): date from 'YYYY-MM-DD', 'DD.MM.YYYY', an ISO timestamp, a datetime or a date."""
    return _to_date(value, "date")


def _fn_today() -> date:
    """today(): the server's local date."""
    return date.today()


def _fn_now() -> datetime:
    """now(): the server's local date and time, without a time zone."""
    return datetime.now()


def _fn_year(value: Any) -> int | None:
    """year(d): year of a date (or of anything date() reads)."""
    day = _to_date(value, "year")
    return None if day is None else day.year


def _fn_month(value: Any) -> int | None:
    """month(d): month 1–12."""
    day = _to_date(value, "month")
    return None if day is None else day.month


def _fn_day(value: Any) -> int | None:
    """day(d): day of the month 1–31."""
    day = _to_date(value, "day")
    return None if day is None else day.day


# Directives format_date() understands: dates and times, nothing that depends on the locale
# or reads the system (no %c, %x, %Z, %s); English names only where the text is fixed.
_DATE_DIRECTIVES = frozenset("YmdHMSyjaAbB%")
_DATE_PATTERN_MAX = 64


def _fn_format_date(value: Any, pattern: Any) -> str | None:
    """format_date(d, '%d.%m.%Y'): a date or timestamp as text (%Y %m %d %H %M %S %y %j,
    %a %A %b %B in English, %% a percent sign)."""
    if value is None:
        return None
    if not isinstance(pattern, str) or len(pattern) > _DATE_PATTERN_MAX:
        raise ExpressionError(
            f"format_date(): the pattern must be text of at most {_DATE_PATTERN_MAX} characters"
        )
    chars = iter(pattern)
    for char in chars:
        if char == "%" and (directive := next(chars, "")) not in _DATE_DIRECTIVES:
            raise ExpressionError(
                f"format_date(): %{directive} is not supported (use %Y %m %d %H %M %S %y %j "
                "%a %A %b %B %%)"
            )
    moment: date
    if isinstance(value, date):
        moment = value
    elif isinstance(value, str) and ("T" in value or ":" in value):  # a timestamp
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ExpressionError(
                f"format_date(): cannot read {_short(value)!r} as a date or timestamp"
            ) from None
    else:
        moment = _to_date(value, "format_date")  # type: ignore[assignment]
        if moment is None:
            return None
    return moment.strftime(pattern)


def _fn_days_between(start: Any, end: Any) -> int | None:
    """days_between(a, b): days from a to b (positive when b is later)."""
    first = _to_date(start, "days_between")
    last = _to_date(end, "days_between")
    if first is None or last is None:
        return None
    return (last - first).days


FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "abs": _fn_abs,
        "coalesce": _fn_coalesce,
        "concat": _fn_concat,
        "contains": _fn_contains,
        "date": _fn_date,
        "day": _fn_day,
        "days_between": _fn_days_between,
        "decimal": _fn_decimal,
        "endswith": _fn_endswith,
        "float": _fn_float,
        "format_date": _fn_format_date,
        "int": _fn_int,
        "is_empty": _fn_is_empty,
        "len": _fn_len,
        "lower": _fn_lower,
        "lpad": _fn_lpad,
        "max": _fn_max,
        "min": _fn_min,
        "month": _fn_month,
        "now": _fn_now,
        "number": _fn_number,
        "replace": _fn_replace,
        "round": _fn_round,
        "rpad": _fn_rpad,
        "startswith": _fn_startswith,
        "str": _fn_str,
        "substr": _fn_substr,
        "today": _fn_today,
        "trim": _fn_trim,
        "upper": _fn_upper,
        "year": _fn_year,
    }
)
# field("Preis netto") is syntax, not a function: it becomes a record read at compile time.
_FIELD = "field"


def _arity(func: Callable[..., Any]) -> tuple[int, int | None]:
    params = inspect.signature(func).parameters.values()
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return required, None
    return required, len(positional)


_ARITY = {name: _arity(func) for name, func in FUNCTIONS.items()}
_FUNCTION_LIST = ", ".join(sorted([*FUNCTIONS, _FIELD]))


def _arity_problem(name: str, given: int) -> str | None:
    low, high = _ARITY[name]
    if low <= given and (high is None or given <= high):
        return None
    if high is None:
        wanted = f"at least {low} argument{'s' if low != 1 else ''}"
    elif low == high:
        wanted = "no arguments" if low == 0 else f"{low} argument{'s' if low != 1 else ''}"
    else:
        wanted = f"{low} to {high} arguments"
    return f"{name}() takes {wanted}, got {given}"


# =========================================================================== checking
class _Source:
    """Maps ast positions (line, UTF-8 byte column) to 0-based character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]

    def offset(self, lineno: int, col_offset: int) -> int:
        start = self.line_starts[min(lineno, len(self.line_starts)) - 1]
        prefix = self.text[start : start + col_offset]
        if prefix.isascii():
            return start + col_offset
        return start + len(prefix.encode("utf-8")[:col_offset].decode("utf-8", errors="ignore"))

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def token_after(self, node: ast.AST, first_chars: str) -> int | None:
        """Offset of the token after ``node`` (skipping ')' and blanks) if it starts so."""
        text = self.text
        i = self.end(node)
        while i < len(text):
            char = text[i]
            if char in " \t\f\r\n\\)":
                i += 1
            elif char == "#":
                while i < len(text) and text[i] not in "\r\n":
                    i += 1
            else:
                return i if char in first_chars else None
        return None

    def segment(self, node: ast.AST) -> str:
        return self.text[self.start(node) : self.end(node)]


_NOT_CONSTANT: tuple[bool, Any, bool] = (False, None, False)
_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.NamedExpr: "assignment (':=') is not allowed",
    ast.Starred: "starred arguments ('*') are not allowed",
    ast.JoinedStr: "f-strings are not allowed (use concat())",
    ast.FormattedValue: "f-strings are not allowed (use concat())",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed (use a tuple: (1, 2))",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Slice: "slices are not allowed (use substr())",
}


class _Checker:
    """Walks the parsed tree once: rejects what is not allowed, folds constants.

    Every problem is collected with its offset and the leftmost one is reported, so the
    user is pointed at the first thing to fix in reading order.
    """

    def __init__(
        self, source: _Source, params: Mapping[str, Any] | Collection[str], values_known: bool
    ) -> None:
        self.source = source
        self.params = params
        self.values_known = values_known
        self.problems: list[tuple[int, str]] = []
        self.constants: dict[ast.AST, Any] = {}  # node → folded value
        self.field_reads: dict[ast.AST, str] = {}  # Name or field() call → field name
        self.fields: dict[str, None] = {}  # in reading order

    def problem(self, offset: int, message: str) -> tuple[bool, Any, bool]:
        self.problems.append((offset, message))
        return _NOT_CONSTANT

    def at(self, node: ast.AST, message: str) -> tuple[bool, Any, bool]:
        return self.problem(self.source.start(node), message)

    def visit(self, node: ast.AST, depth: int) -> tuple[bool, Any, bool]:
        """Returns (is_constant, value, depends_on_params)."""
        if depth > MAX_DEPTH:
            return self.at(node, f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        handler = _ALLOWED_NODES.get(type(node))
        if handler is not None:
            result = handler(self, node, depth + 1)
            if result[0]:
                self.constants[node] = result[1]
            return result
        if isinstance(node, ast.Attribute):
            where = self.source.token_after(node.value, ".")
            self.problem(
                self.source.start(node) if where is None else where,
                f"attribute access is not allowed ('.{node.attr}')",
            )
            self.visit(node.value, depth + 1)  # anything to its left is reported first
            return _NOT_CONSTANT
        if isinstance(node, ast.Subscript):
            where = self.source.token_after(node.value, "[")
            self.problem(
                self.source.start(node) if where is None else where,
                "indexing and slicing are not allowed ('[...]'; use substr() for text)",
            )
            self.visit(node.value, depth + 1)
            return _NOT_CONSTANT
        default = f"{type(node).__name__} is not allowed"
        return self.at(node, _REJECTED_NODES.get(type(node), default))

    # -- leaves ------------------------------------------------------------------------
    def visit_Constant(self, node: ast.Constant, depth: int) -> tuple[bool, Any, bool]:
        value = node.value
        if isinstance(value, str):
            if len(value) > MAX_TEXT_CONSTANT:
                return self.at(
                    node,
                    f"text constant is too long ({len(value):,} characters, "
                    f"limit {MAX_TEXT_CONSTANT:,})",
                )
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            pass
        elif isinstance(value, int):
            if abs(value) > MAX_INT_CONSTANT:
                return self.at(
                    node, "number constant is too large (limit 10**18; use ** for larger numbers)"
                )
        elif isinstance(value, bytes):
            return self.at(node, "bytes literals are not allowed")
        elif isinstance(value, complex):
            return self.at(node, "complex numbers are not allowed")
        else:
            return self.at(node, f"{value!r} is not allowed")
        return True, value, False

    def visit_Name(self, node: ast.Name, depth: int) -> tuple[bool, Any, bool]:
        name = node.id
        if name.startswith("__"):
            return self.at(
                node, f"name {name!r} is not allowed (names starting with '__' are reserved)"
            )
        if not isinstance(node.ctx, ast.Load):
            return self.at(node, f"assigning to {name!r} is not allowed")
        if name in self.params:
            if self.values_known:
                return True, self.params[name], True  # type: ignore[index]
            return False, None, True
        self.field_reads[node] = name
        self.fields.setdefault(name, None)
        return _NOT_CONSTANT

    def visit_Tuple(self, node: ast.Tuple | ast.List, depth: int) -> tuple[bool, Any, bool]:
        results = [self.visit(elt, depth) for elt in node.elts]
        if all(r[0] for r in results):
            return True, tuple(r[1] for r in results), any(r[2] for r in results)
        return _NOT_CONSTANT

    visit_List = visit_Tuple

    # -- operators ---------------------------------------------------------------------
    def fold(
        self,
        node: ast.AST,
        offset: int,
        func: Callable[..., Any],
        operands: list[Any],
        from_params: bool,
    ) -> tuple[bool, Any, bool]:
        """Compute a constant sub-expression now, through the same bounded operators.

        Literal-only failures (``9**9**9``, ``1/0``) are reported at check time; with a
        param involved the sub-expression is simply left for evaluation, where a branch
        that is never taken never fails.
        """
        try:
            return True, func(*operands), from_params
        except ExpressionError as exc:
            if from_params:
                return _NOT_CONSTANT
            return self.problem(offset, exc.message)

    def visit_BinOp(self, node: ast.BinOp, depth: int) -> tuple[bool, Any, bool]:
        left = self.visit(node.left, depth)
        right = self.visit(node.right, depth)
        op_type = type(node.op)
        symbol = _BINOPS[op_type][0] if op_type in _BINOPS else _REJECTED_BINOPS.get(op_type, "?")
        where = self.source.token_after(node.left, symbol[0])
        offset = self.source.start(node) if where is None else where
        if op_type not in _BINOPS:
            return self.problem(offset, f"operator {symbol!r} is not allowed")
        if left[0] and right[0]:
            func = _explain_binop(symbol, _BINOPS[op_type][1], "")
            return self.fold(node, offset, func, [left[1], right[1]], left[2] or right[2])
        return _NOT_CONSTANT

    def visit_UnaryOp(self, node: ast.UnaryOp, depth: int) -> tuple[bool, Any, bool]:
        operand = self.visit(node.operand, depth)
        if type(node.op) not in _UNARYOPS:
            return self.at(node, "operator '~' is not allowed")
        symbol, func = _UNARYOPS[type(node.op)]
        if operand[0]:
            wrapped = _explain_unary(symbol, func, "")
            return self.fold(node, self.source.start(node), wrapped, [operand[1]], operand[2])
        return _NOT_CONSTANT

    def visit_BoolOp(self, node: ast.BoolOp, depth: int) -> tuple[bool, Any, bool]:
        for value in node.values:
            self.visit(value, depth)
        return _NOT_CONSTANT

    def visit_IfExp(self, node: ast.IfExp, depth: int) -> tuple[bool, Any, bool]:
        self.visit(node.test, depth)
        self.visit(node.body, depth)
        self.visit(node.orelse, depth)
        return _NOT_CONSTANT

    def visit_Compare(self, node: ast.Compare, depth: int) -> tuple[bool, Any, bool]:
        self.visit(node.left, depth)
        previous = node.left
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _CMPOPS:
                symbol = "is not" if isinstance(op, ast.IsNot) else "is"
                where = self.source.token_after(previous, "i")
                self.problem(
                    self.source.start(node) if where is None else where,
                    f"operator {symbol!r} is not allowed (use == None, != None or is_empty())",
                )
            self.visit(comparator, depth)
            previous = comparator
        return _NOT_CONSTANT

    # -- calls -------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call, depth: int) -> tuple[bool, Any, bool]:
        func = node.func
        if not isinstance(func, ast.Name):
            self.visit(func, depth)
            where = self.source.token_after(func, "(")
            self.problem(
                self.source.start(node) if where is None else where,
                "only functions can be called, by name (e.g. upper(name))",
            )
            return _NOT_CONSTANT
        name = func.id
        if name.startswith("__"):
            return self.at(
                func, f"name {name!r} is not allowed (names starting with '__' are reserved)"
            )
        if name != _FIELD and name not in FUNCTIONS:
            return self.at(
                func, f"function {name!r} is not available (functions: {_FUNCTION_LIST})"
            )
        for keyword in node.keywords:
            label = f"{keyword.arg}=" if keyword.arg else "**"
            self.at(
                keyword, f"keyword arguments are not allowed ('{label}'); pass values by position"
            )
        for arg in node.args:
            self.visit(arg, depth)
        if name == _FIELD:
            if len(node.args) != 1 or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):
                return self.at(node, 'field() takes one text constant, e.g. field("Preis netto")')
            field_name = node.args[0].value
            self.field_reads[node] = field_name
            self.fields.setdefault(field_name, None)
            return _NOT_CONSTANT
        problem = _arity_problem(name, len(node.args))
        if problem is not None:
            return self.at(node, problem)
        return _NOT_CONSTANT


# The allow-list: every node type an expression may contain, and who checks it. Anything
# else (attributes, subscripts, comprehensions, lambdas, ...) is rejected in visit().
_ALLOWED_NODES: dict[type[ast.AST], Callable[[_Checker, Any, int], tuple[bool, Any, bool]]] = {
    ast.Constant: _Checker.visit_Constant,
    ast.Name: _Checker.visit_Name,
    ast.Tuple: _Checker.visit_Tuple,
    ast.List: _Checker.visit_List,
    ast.BinOp: _Checker.visit_BinOp,
    ast.UnaryOp: _Checker.visit_UnaryOp,
    ast.BoolOp: _Checker.visit_BoolOp,
    ast.IfExp: _Checker.visit_IfExp,
    ast.Compare: _Checker.visit_Compare,
    ast.Call: _Checker.visit_Call,
}


def _parse(
    text: str, params: Mapping[str, Any] | Collection[str], values_known: bool
) -> tuple[ast.expr, _Source, _Checker]:
    """Parse and check; raise the first problem in reading order."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be text, got {_type_name(text)}")
    if not text.strip():
        raise ExpressionError("expression is empty", expression=text, position=1)
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"expression is too long ({len(text):,} characters, limit {MAX_EXPRESSION_LENGTH:,})",
            position=1,
        )
    if "\x00" in text:
        raise ExpressionError(
            "expression contains a NUL character", expression=text, position=text.index("\x00") + 1
        )
    source = _Source(text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        position = None
        if exc.lineno is not None and exc.offset is not None:
            line = min(max(exc.lineno, 1), len(source.line_starts))
            position = min(source.line_starts[line - 1] + max(exc.offset, 1), len(text) + 1)
        raise ExpressionError(
            f"syntax error: {exc.msg}", expression=text, position=position
        ) from exc
    except (RecursionError, MemoryError):
        raise ExpressionError(
            "expression is too complex (too deeply nested)", expression=text, position=1
        ) from None
    checker = _Checker(source, params, values_known)
    checker.visit(tree.body, 1)
    if checker.problems:
        offset, message = min(checker.problems, key=lambda p: p[0])
        raise ExpressionError(message, expression=text, position=offset + 1)
    return tree.body, source, checker


# =========================================================================== compiling
_LITERAL_TYPES = frozenset({int, float, str, bool, type(None)})
_NATIVE_COMPARE_TYPES = frozenset({int, str, bool, type(None)})


def _is_literal(value: Any) -> bool:
    if type(value) in _LITERAL_TYPES:
        return True
    return type(value) is tuple and all(_is_literal(v) for v in value)


def _name(identifier: str) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Load())


def _call(identifier: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=_name(identifier), args=args, keywords=[])


class _Emitter:
    """Rewrites a checked tree into the body of ``lambda __r: ...``.

    Record reads become ``__r["name"]`` (fast) or ``__get(__r, "name")`` (careful);
    functions and operator helpers are globals whose names start with ``__``, which user
    names never do.
    """

    def __init__(
        self, source: _Source, checker: _Checker, namespace: dict[str, Any], mode: str
    ) -> None:
        self.source = source
        self.checker = checker
        self.namespace = namespace
        self.careful = mode == "careful"
        self.native = mode == "fast"
        self.temps = 0

    def global_name(self, prefix: str, value: Any) -> ast.Name:
        identifier = f"__{prefix}{len(self.namespace)}"
        self.namespace[identifier] = value
        return _name(identifier)

    def where(self, node: ast.AST) -> str:
        segment = self.source.segment(node)
        return "" if segment == self.source.text.strip() else f" in {_short(segment, 60)!r}"

    def constant(self, value: Any) -> ast.expr:
        if _is_literal(value):
            return ast.Constant(value=value)
        return self.global_name("k", value)

    def const_of(self, node: ast.AST) -> tuple[bool, Any]:
        if node in self.checker.constants:
            return True, self.checker.constants[node]
        return False, None

    def emit(self, node: ast.expr) -> ast.expr:
        if node in self.checker.constants:
            value = self.checker.constants[node]
            if isinstance(node, ast.List):  # a fresh list per record: results may be mutated
                return ast.List(elts=[self.constant(v) for v in value], ctx=ast.Load())
            return self.constant(value)
        if node in self.checker.field_reads:
            name = ast.Constant(value=self.checker.field_reads[node])
            if self.careful:
                return _call("__get", [_name("__r"), name])
            return ast.Subscript(value=_name("__r"), slice=name, ctx=ast.Load())
        method: Callable[[Any], ast.expr] = getattr(self, f"emit_{type(node).__name__}")
        return method(node)

    def emit_Tuple(self, node: ast.Tuple) -> ast.expr:
        return ast.Tuple(elts=[self.emit(e) for e in node.elts], ctx=ast.Load())

    def emit_List(self, node: ast.List) -> ast.expr:
        return ast.List(elts=[self.emit(e) for e in node.elts], ctx=ast.Load())

    def is_float_constant(self, node: ast.AST) -> bool:
        known, value = self.const_of(node)
        return known and type(value) is float

    def emit_BinOp(self, node: ast.BinOp) -> ast.expr:
        left, right = self.emit(node.left), self.emit(node.right)
        symbol, func = _BINOPS[type(node.op)]
        if self.careful:
            helper = self.global_name("o", _explain_binop(symbol, func, self.where(node)))
            return ast.Call(func=helper, args=[left, right], keywords=[])
        native = self.native and (
            # not //: Decimal's truncates toward zero, _floordiv floors like float's
            isinstance(node.op, (ast.Add, ast.Sub, ast.Div))
            # float * anything cannot repeat a sequence: it multiplies or raises TypeError
            or (
                isinstance(node.op, ast.Mult)
                and (self.is_float_constant(node.left) or self.is_float_constant(node.right))
            )
        )
        if native:
            return ast.BinOp(left=left, op=type(node.op)(), right=right)
        return _call(_BINOP_HELPERS[symbol], [left, right])

    def emit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        operand = self.emit(node.operand)
        if self.careful and not isinstance(node.op, ast.Not):
            symbol, func = _UNARYOPS[type(node.op)]
            helper = self.global_name("u", _explain_unary(symbol, func, self.where(node)))
            return ast.Call(func=helper, args=[operand], keywords=[])
        return ast.UnaryOp(op=type(node.op)(), operand=operand)

    def emit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        return ast.BoolOp(op=type(node.op)(), values=[self.emit(v) for v in node.values])

    def emit_IfExp(self, node: ast.IfExp) -> ast.expr:
        return ast.IfExp(
            test=self.emit(node.test), body=self.emit(node.body), orelse=self.emit(node.orelse)
        )

    def native_compare(self, op: ast.cmpop, left: ast.AST, right: ast.AST) -> bool:
        """Whether Python's own comparison already gives the right answer.

        Only Decimal against float needs care, so a side that is a text, int, bool or
        None constant makes the native operator exact.
        """
        if isinstance(op, (ast.In, ast.NotIn)):
            known, value = self.const_of(right)
            if known and isinstance(value, str):
                return True
            return (
                known
                and isinstance(value, tuple)
                and all(type(v) in _NATIVE_COMPARE_TYPES for v in value)
            )
        for side in (left, right):
            known, value = self.const_of(side)
            if known and type(value) in _NATIVE_COMPARE_TYPES:
                return True
        return False

    def emit_Compare(self, node: ast.Compare) -> ast.expr:
        parts: list[ast.expr] = []
        left_node: ast.AST = node.left
        left = self.emit(node.left)
        last = len(node.ops) - 1
        for i, (op, right_node) in enumerate(zip(node.ops, node.comparators, strict=True)):
            right = self.emit(right_node)
            if isinstance(op, (ast.In, ast.NotIn)):
                known, value = self.const_of(right_node)
                if known and isinstance(value, tuple):  # also for list literals
                    right = self.constant(value)
            temp = None
            if i < last:  # chained: evaluate the middle operand once, like Python does
                self.temps += 1
                temp = f"__t{self.temps}"
                right = ast.NamedExpr(target=ast.Name(id=temp, ctx=ast.Store()), value=right)
            symbol, helper_name, func = _CMPOPS[type(op)]
            if self.careful:
                where = self.where(node)
                helper = self.global_name("c", _explain_compare(symbol, func, where))
                parts.append(ast.Call(func=helper, args=[left, right], keywords=[]))
            elif self.native_compare(op, left_node, right_node):
                parts.append(ast.Compare(left=left, ops=[type(op)()], comparators=[right]))
            else:
                parts.append(_call(helper_name, [left, right]))
            left = _name(temp) if temp else right
            left_node = right_node
        return parts[0] if len(parts) == 1 else ast.BoolOp(op=ast.And(), values=parts)

    def emit_Call(self, node: ast.Call) -> ast.expr:
        name = node.func.id  # type: ignore[attr-defined]
        args = [self.emit(a) for a in node.args]
        if self.careful:
            helper = _explain_call(name, FUNCTIONS[name], self.where(node))
            return ast.Call(func=self.global_name("f", helper), args=args, keywords=[])
        return _call(f"__fn_{name}", args)


def _build(
    body: ast.expr, source: _Source, checker: _Checker, namespace: dict[str, Any], mode: str
) -> Callable[[Mapping[str, Any]], Any]:
    emitter = _Emitter(source, checker, namespace, mode)
    lam = ast.Lambda(
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg="__r")],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=emitter.emit(body),
    )
    tree = ast.fix_missing_locations(ast.Expression(body=lam))
    try:
        code = compile(tree, "<expression>", "eval")
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        # Only reachable through a bug here; still one error type for the caller.
        raise ExpressionError(
            f"expression could not be compiled: {exc}", expression=source.text, position=1
        ) from exc
    # The code object was built from a checked tree; its globals are the helpers only.
    return eval(code, namespace)


_BINOP_HELPERS = {symbol: f"__op_{op.__name__}" for op, (symbol, _) in _BINOPS.items()}
_BINOPS_BY_SYMBOL = dict(_BINOPS.values())


def _namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "__get": _get,
    }
    for symbol, helper_name in _BINOP_HELPERS.items():
        namespace[helper_name] = _BINOPS_BY_SYMBOL[symbol]
    for _symbol, helper_name, func in _CMPOPS.values():
        namespace[helper_name] = func
    for name, func in FUNCTIONS.items():
        namespace[f"__fn_{name}"] = func
    return namespace


# =========================================================================== public API
Evaluator = Callable[[Mapping[str, Any]], Any]
_SWITCH_AFTER = 16  # records that needed Decimal/float coercion before it is tried first


class Expression:
    """A checked, compiled expression; call it with a record to get its value.

    Compiled once, applied per record. Evaluation problems raise :class:`ExpressionError`
    with ``position=None`` and a message naming the field, operator or function involved.
    Instances hold no per-record state and may be shared between threads.
    """

    __slots__ = ("_careful", "_coerced", "_coercing", "_first", "_params", "fields", "text")

    def __init__(
        self,
        text: str,
        fields: frozenset[str],
        params: Mapping[str, Any],
        variants: tuple[Evaluator, Evaluator, Evaluator],
    ) -> None:
        self.text = text
        self.fields = fields
        self._params = params
        self._first, self._coercing, self._careful = variants
        self._coerced = 0

    def __call__(self, record: Mapping[str, Any]) -> Any:
        try:
            return self._first(record)
        except Exception:
            return self._retry(record)

    def _retry(self, record: Mapping[str, Any]) -> Any:
        """Slow path: coerce a Decimal/float mix, or explain exactly what went wrong."""
        try:
            result = self._coercing(record)
        except Exception:
            return self._evaluate_carefully(record)
        self._coerced += 1
        if self._coerced == _SWITCH_AFTER:
            # The data mixes Decimal and float (e.g. a NUMERIC column times 1.19): an
            # exception per record costs more than the coercing variant, so use it first.
            self._first = self._coercing
        return result

    def _evaluate_carefully(self, record: Mapping[str, Any]) -> Any:
        try:
            return self._careful(record)
        except ExpressionError as exc:
            raise ExpressionError(exc.message, expression=self.text) from exc.__cause__
        except Exception as exc:
            raise ExpressionError(
                f"evaluation failed: {_describe(exc)}", expression=self.text
            ) from exc

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __reduce__(self) -> tuple[Callable[..., Expression], tuple[str, dict[str, Any]]]:
        # Code objects with our globals do not pickle; recompiling is cheap and safe.
        return _recompile, (self.text, dict(self._params))


def _recompile(text: str, params: dict[str, Any]) -> Expression:
    return compile_expression(text, params=params)


class RecordMapper:
    """Several named expressions applied to every record of a batch in one compiled loop.

    The loop is generated once per node run (``__r = dict(src); __r["gross"] = ...``), so a
    record costs one dict copy and the expressions themselves, not a Python call per
    expression. A record the fast loop cannot handle (a Decimal/float mix, a missing
    field, a bad value) is redone field by field through the :class:`Expression` objects,
    which coerce or raise the precise error; the loop then goes on with the next record.
    """

    def __init__(
        self,
        assignments: list[tuple[str, Expression]],
        keep: bool,
        loops: tuple[Callable[..., None], Callable[..., None]],
    ) -> None:
        self.assignments = assignments
        self.keep = keep
        self.names = sorted(name for name, _ in assignments)
        self._loop, self._coercing_loop = loops
        self._fallbacks = 0

    def map_batch(
        self,
        rows: list[dict[str, Any]],
        reject: Callable[[dict[str, Any], str], None],
    ) -> list[dict[str, Any]]:
        """New records for ``rows``; ``reject(record, message)`` gets each one that failed."""
        out: list[dict[str, Any]] = []
        start, total = 0, len(rows)
        while start < total:
            before = len(out)
            try:
                self._loop(rows, start, out)
                break
            except Exception:
                # a record is appended only when all its fields are done: the failing
                # one is the first not in ``out``
                index = start + len(out) - before
            record = rows[index]
            mapped = self._slow(record, reject)
            if mapped is not None:
                out.append(mapped)
            start = index + 1
        return out

    def _slow(
        self, record: dict[str, Any], reject: Callable[[dict[str, Any], str], None]
    ) -> dict[str, Any] | None:
        work = dict(record)
        for name, expression in self.assignments:
            try:
                work[name] = expression(work)
            except ExpressionError as exc:
                reject(record, f"field {name!r}: {exc}")
                return None
        self._fallbacks += 1
        if self._fallbacks == _SWITCH_AFTER:
            # the data mixes Decimal and float: an exception per record costs more than
            # the coercing loop, so switch to it for the rest of the run
            self._loop = self._coercing_loop
        return work if self.keep else {name: work[name] for name in self.names}


def compile_map(
    assignments: list[tuple[str, str]],
    *,
    params: Mapping[str, Any] | None = None,
    keep: bool = True,
) -> RecordMapper:
    """Check and compile ``[(field, expression), ...]`` into one batch loop.

    Assignments run in the given order, each seeing the fields assigned before it. With
    ``keep`` False a record keeps only the assigned fields.

    Raises:
        ExpressionError: as :func:`check_expression`, for the first bad expression.

    Example:
        >>> mapper = compile_map([("net", "price * qty"), ("gross", "net * 2")])
        >>> mapper.map_batch([{"price": 3, "qty": 2}], reject=print)
        [{'price': 3, 'qty': 2, 'net': 6, 'gross': 12}]
    """
    values = dict(params or {})
    compiled = [(name, compile_expression(text, params=values)) for name, text in assignments]
    parsed = [(name, *_parse(text, values, values_known=True)) for name, text in assignments]
    loops = tuple(_build_loop(parsed, keep, mode) for mode in ("fast", "coercing"))
    return RecordMapper(compiled, keep, loops)  # type: ignore[arg-type]


def _build_loop(
    parsed: list[tuple[str, ast.expr, _Source, _Checker]], keep: bool, mode: str
) -> Callable[..., None]:
    """``def loop(rows, start, out)``: map rows[start:] into ``out`` until one fails."""
    namespace = _namespace()
    namespace["__dict"] = dict
    namespace["__islice"] = itertools.islice
    body: list[ast.stmt] = []
    for name, tree, source, checker in parsed:
        value = _Emitter(source, checker, namespace, mode).emit(tree)
        target = ast.Subscript(value=_name("__r"), slice=ast.Constant(value=name), ctx=ast.Store())
        body.append(ast.Assign(targets=[target], value=value))
    if keep:
        result: ast.expr = _name("__r")
    else:
        names = sorted(name for name, *_ in parsed)
        result = ast.Dict(
            keys=[ast.Constant(value=n) for n in names],
            values=[
                ast.Subscript(value=_name("__r"), slice=ast.Constant(value=n), ctx=ast.Load())
                for n in names
            ],
        )
    loop = ast.For(
        target=ast.Name(id="__src", ctx=ast.Store()),
        iter=_call("__islice", [_name("__rows"), _name("__start"), ast.Constant(value=None)]),
        body=[
            ast.Assign(
                targets=[ast.Name(id="__r", ctx=ast.Store())],
                value=_call("__dict", [_name("__src")]),
            ),
            *body,
            ast.Expr(value=_call("__append", [result])),
        ],
        orelse=[],
    )
    func = ast.FunctionDef(
        name="__loop",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg="__rows"), ast.arg(arg="__start"), ast.arg(arg="__out")],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=[
            ast.Assign(
                targets=[ast.Name(id="__append", ctx=ast.Store())],
                value=ast.Attribute(value=_name("__out"), attr="append", ctx=ast.Load()),
            ),
            loop,
        ],
        decorator_list=[],
        returns=None,
    )
    module = ast.fix_missing_locations(ast.Module(body=[func], type_ignores=[]))
    # Built only from checked trees plus the fixed frame above; globals are our helpers.
    exec(compile(module, "<map>", "exec"), namespace)
    return namespace["__loop"]


def check_expression(text: str, *, params: Collection[str] = ()) -> None:
    """Check an expression without compiling it, e.g. when a flow is validated.

    ``params`` are the names of run params (their values are not needed to check).

    Raises:
        ExpressionError: the first problem in reading order, with ``position`` the
            1-based character offset in ``text`` where it is.

    Example:
        >>> check_expression("price * markup", params=["markup"])
        >>> check_expression("price.__class__")
        Traceback (most recent call last):
        ...
        engine.errors.ExpressionError: attribute access is not allowed ('.__class__') at position 6 in 'price.__class__'
    """  # noqa: E501
    _parse(text, frozenset(params), values_known=False)


def compile_expression(text: str, *, params: Mapping[str, Any] | None = None) -> Expression:
    """Check and compile an expression once; the result is applied per record.

    A name that is a key of ``params`` is that param's value; any other name is a record
    field. Constant parts (including params) are computed here, once.

    Raises:
        ExpressionError: as :func:`check_expression`.

    Example:
        >>> gross = compile_expression("price * markup", params={"markup": 2})
        >>> gross({"price": 21})
        42
    """
    values = dict(params or {})
    body, source, checker = _parse(text, values, values_known=True)
    namespace = _namespace()
    variants = (
        _build(body, source, checker, namespace, "fast"),
        _build(body, source, checker, namespace, "coercing"),
        _build(body, source, checker, namespace, "careful"),
    )
    return Expression(text, frozenset(checker.fields), MappingProxyType(values), variants)
