"""The expression language: what users may write, what they get back, what is refused."""

from __future__ import annotations

import pickle
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import engine.run.expressions as expressions
from engine.errors import ExpressionError
from engine.run.expressions import FUNCTIONS, check_expression, compile_expression

RECORD = {"price": 10.5, "qty": 3, "sku": "A-1"}


def evaluate(text: str, record: dict[str, Any] | None = None, **params: Any) -> Any:
    return compile_expression(text, params=params)(record if record is not None else {})


def rejection(text: str, params: tuple[str, ...] = ()) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        check_expression(text, params=params)
    return info.value


def evaluation_error(text: str, record: dict[str, Any], **params: Any) -> ExpressionError:
    expression = compile_expression(text, params=params)
    with pytest.raises(ExpressionError) as info:
        expression(record)
    return info.value


# --------------------------------------------------------------------------- escapes
ESCAPES = [
    # text, position of the problem, what the message names
    (
        "().__class__.__bases__[0].__subclasses__()",
        3,
        "attribute access is not allowed ('.__class__')",
    ),
    ("'{0.__class__}'.format(1)", 16, "attribute access is not allowed ('.format')"),
    ("__import__('os')", 1, "name '__import__' is not allowed"),
    ("getattr(x, 'y')", 1, "function 'getattr' is not available (functions: abs, coalesce,"),
    ("9**9**9", 2, "exponent 387420489 is too large"),
    ("'a'*10**10", 4, "result would be too long"),
    ("[x for x in range(10**9)]", 1, "comprehensions are not allowed"),
    ("(lambda: 1)()", 2, "lambda is not allowed"),
    ("eval('1')", 1, "function 'eval' is not available"),
    ("open('/etc/passwd')", 1, "function 'open' is not available"),
    ("type(x)", 1, "function 'type' is not available"),
    ("x.__dict__", 2, "attribute access is not allowed ('.__dict__')"),
    ("__builtins__", 1, "name '__builtins__' is not allowed"),
    ("__r", 1, "name '__r' is not allowed"),
    ("sku[0]", 4, "indexing and slicing are not allowed"),
    ("(x for x in y)", 1, "generator expressions are not allowed"),
    ("{k: 1 for k in y}", 1, "comprehensions are not allowed"),
    ("(y := 1)", 2, "assignment (':=') is not allowed"),
    ("max(*qty)", 5, "starred arguments ('*') are not allowed"),
    ("upper(sku, errors=1)", 12, "keyword arguments are not allowed ('errors=')"),
    ("f'{price}'", 1, "f-strings are not allowed"),
    ("{'a': 1}", 1, "dict literals are not allowed"),
    ("{1, 2}", 1, "set literals are not allowed"),
    ("today()()", 8, "only functions can be called, by name"),
    ("qty << 40", 5, "operator '<<' is not allowed"),
    ("~qty", 1, "operator '~' is not allowed"),
    ("sku is None", 5, "operator 'is' is not allowed"),
    ("b'raw'", 1, "bytes literals are not allowed"),
    ("2j", 1, "complex numbers are not allowed"),
    ("10**18 * 100000000000000000000", 10, "number constant is too large"),
    ("1 / 0", 3, "division by zero"),
    ("field(sku)", 1, "field() takes one text constant"),
    ("substr(sku)", 1, "substr() takes 2 to 3 arguments, got 1"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("text", "position", "message"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_disallowed_expression_is_rejected_at_the_offending_position(
    text: str, position: int, message: str
) -> None:
    error = rejection(text)

    assert message in error.message
    assert error.position == position
    assert error.expression == text
    assert f"at position {position}" in str(error)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text", [e[0] for e in ESCAPES])
def test_disallowed_expression_is_never_compiled(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_compile(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{text!r} reached the compiler")

    monkeypatch.setattr(expressions, "_build", must_not_compile)

    with pytest.raises(ExpressionError):
        compile_expression(text, params={"y": 1})


@pytest.mark.timeout(10)
def test_text_repeated_by_a_field_fails_fast_at_evaluation() -> None:
    error = evaluation_error("name * n", {"name": "ab", "n": 10**10})

    assert "result would be too long (20,000,000,000 items" in error.message
    assert error.position is None


def test_repetition_just_over_the_limit_is_refused_even_when_it_would_fit() -> None:
    expression = compile_expression("name * n")

    assert len(expression({"name": "ab", "n": 500_000})) == 1_000_000
    with pytest.raises(ExpressionError, match="too long \\(1,000,002 items"):
        expression({"name": "ab", "n": 500_001})
    with pytest.raises(ExpressionError, match="too long"):
        expression({"name": ["x"], "n": 1_000_001})


@pytest.mark.timeout(10)
def test_huge_power_from_fields_fails_fast_at_evaluation() -> None:
    assert (
        "exponent 387420489 is too large" in evaluation_error("a ** b", {"a": 9, "b": 9**9}).message
    )
    assert "more than 10,000 digits" in evaluation_error("a ** b", {"a": 10**20, "b": 999}).message
    assert "more than 10,000 digits" in evaluation_error("a * a", {"a": 7**6000}).message


def test_record_values_are_data_never_code() -> None:
    record = {"v": "__import__('os').system('echo owned')"}

    assert evaluate("v", record) == "__import__('os').system('echo owned')"
    assert evaluate("upper(v)", record) == "__IMPORT__('OS').SYSTEM('ECHO OWNED')"
    assert evaluate("concat(v, '!')", record) == "__import__('os').system('echo owned')!"
    assert evaluate("len(v)", record) == 37


def test_percent_on_text_is_not_string_formatting() -> None:
    error = evaluation_error("fmt % qty", {"fmt": "%5d", "qty": 1})

    assert error.message == "cannot apply '%' to str and int ('%' works on numbers only)"


def test_deep_or_long_expressions_are_rejected_not_crashing() -> None:
    assert "nested too deeply" in rejection("a+" * 300 + "a").message
    assert "too complex" in rejection("-" * 19_000 + "1").message
    assert "expression is too long" in rejection("1+" * 10_001).message
    assert "text constant is too long" in rejection(repr("x" * 10_001)).message
    assert rejection("   ").message == "expression is empty"


# --------------------------------------------------------------------------- positions
def test_syntax_error_points_at_the_problem() -> None:
    error = rejection("price * (qty + 1")

    assert error.message == "syntax error: '(' was never closed"
    assert error.position == 9


def test_position_counts_characters_not_bytes() -> None:
    assert rejection('"Größe: " + x.y').position == 14


def test_position_in_a_multi_line_expression_counts_from_the_start() -> None:
    text = "(price\n * qty.real)"

    assert rejection(text).position == text.index(".") + 1


def test_first_problem_in_reading_order_is_reported() -> None:
    error = rejection("getattr(x, 1) + y.z")

    assert error.position == 1
    assert "getattr" in error.message


# --------------------------------------------------------------------------- operators
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price * qty", 31.5),
        ("price + qty - 1", 12.5),
        ("qty / 2", 1.5),
        ("qty // 2", 1),
        ("qty % 2", 1),
        ("qty ** 2", 9),
        ("-qty + +qty", 0),
        ("2 + 3 * 4 ** 2", 50),
        ("(2 + 3) * 4", 20),
        ("sku + '/' + sku", "A-1/A-1"),
        ("sku * 2", "A-1A-1"),
        ("qty == 3", True),
        ("qty != 3", False),
        ("qty < 4 <= 4", True),
        ("1 < qty < 3", False),
        ("qty >= 3 > price", False),
        ("sku in ('A-1', 'B-2')", True),
        ("sku not in ['A-1']", False),
        ("'-' in sku", True),
        ("qty > 1 and price > 100", False),
        ("qty > 1 or price > 100", True),
        ("not qty", False),
        ("sku and qty", 3),
        ("'' or sku", "A-1"),
        ("'many' if qty > 2 else 'few'", "many"),
        ("None", None),
        ("(qty, 1)", (3, 1)),
        ("[qty, 1]", [3, 1]),
    ],
)
def test_operators_follow_python_semantics(text: str, expected: Any) -> None:
    result = evaluate(text, RECORD)

    assert result == expected
    assert type(result) is type(expected)


def test_chained_comparison_evaluates_the_middle_once_and_short_circuits() -> None:
    assert evaluate("0 < len(sku) < 5", RECORD) is True
    # the second comparison would fail (str < int), but the first is already false
    assert evaluate("qty > 5 > sku", RECORD) is False


def test_list_literal_result_is_fresh_for_every_record() -> None:
    expression = compile_expression("[1, 2]")
    first = expression({})
    first.append(3)

    assert expression({}) == [1, 2]


# --------------------------------------------------------------------------- Decimal
def test_decimal_field_times_float_gives_exact_decimal() -> None:
    assert evaluate("price * 1.19", {"price": Decimal("10.00")}) == Decimal("11.9000")
    assert evaluate("price * markup", {"price": Decimal("10")}, markup=1.19) == Decimal("11.90")
    assert evaluate("price - 0.5", {"price": Decimal("10")}) == Decimal("9.5")
    assert evaluate("price / 0.5", {"price": Decimal("3")}) == Decimal("6")
    assert evaluate("price % 2.5", {"price": Decimal("7.5")}) == Decimal("0.0")
    assert evaluate("2.0 ** price", {"price": Decimal("3")}) == Decimal("8")


def test_decimal_compares_with_float_as_written() -> None:
    record = {"price": Decimal("1.19")}

    assert evaluate("price == 1.19", record) is True
    assert evaluate("price <= 1.19", record) is True
    assert evaluate("price > 1.18", record) is True
    assert evaluate("price in (1.19, 2.5)", record) is True
    assert evaluate("price == other", {**record, "other": 1.19}) is True


def test_many_decimal_records_then_floats_and_bad_values_still_work() -> None:
    expression = compile_expression("price * markup", params={"markup": 1.19})

    decimals = [expression({"price": Decimal(n)}) for n in range(50)]
    assert decimals[10] == Decimal("11.90")
    assert expression({"price": 2.0}) == pytest.approx(2.38)
    with pytest.raises(ExpressionError, match="cannot apply '\\*' to str and float"):
        expression({"price": "10"})


def test_type_error_names_operator_operands_and_sub_expression() -> None:
    error = evaluation_error("name * 2.5 + 1", {"name": "Tisch"})

    assert error.message == "cannot apply '*' to str and float in 'name * 2.5'"
    assert str(error) == ("cannot apply '*' to str and float in 'name * 2.5' in 'name * 2.5 + 1'")
    assert error.position is None


def test_text_plus_number_suggests_concat() -> None:
    error = evaluation_error("sku + qty", RECORD)

    assert error.message == (
        "cannot apply '+' to str and int (use concat() to join text with other values)"
    )


def test_division_by_zero_is_an_expression_error() -> None:
    assert evaluation_error("price / qty", {"price": 1, "qty": 0}).message == "division by zero"
    error = evaluation_error("price // qty", {"price": Decimal(1), "qty": Decimal(0)})
    assert error.message == "division by zero"


def test_comparing_incompatible_values_says_so() -> None:
    error = evaluation_error("qty > limit", {"qty": None, "limit": 3})

    assert error.message == (
        "cannot compare None and int with '>' (use coalesce() for missing values)"
    )


# --------------------------------------------------------------------------- names
def test_unknown_field_lists_the_fields_there_are() -> None:
    error = evaluation_error("prcie * qty", {"sku": "A", "price": 1, "qty": 2})

    assert error.message == "unknown field 'prcie' (fields: price, qty, sku)"
    assert error.position is None


def test_field_reads_names_that_are_not_identifiers() -> None:
    expression = compile_expression('field("Preis netto") * menge')

    assert expression({"Preis netto": 2.5, "menge": 4}) == 10.0
    assert expression.fields == frozenset({"Preis netto", "menge"})


def test_param_is_a_constant_and_wins_over_a_field_of_the_same_name() -> None:
    expression = compile_expression("price * markup", params={"markup": 2})

    assert expression({"price": 21, "markup": 1000}) == 42
    assert expression.fields == frozenset({"price"})


def test_param_of_any_type_is_used_as_given() -> None:
    cutoff = date(2024, 6, 1)

    assert evaluate("date(ts) >= cutoff", {"ts": "2024-06-02"}, cutoff=cutoff) is True
    assert evaluate("price * rate", {"price": 2}, rate=Decimal("0.5")) == Decimal("1.0")


def test_check_knows_params_by_name_only() -> None:
    check_expression("price * markup", params=["markup"])

    assert "exponent" in rejection("2 ** (10**9)", params=("markup",)).message


def test_param_that_makes_a_never_taken_branch_fail_is_left_for_evaluation() -> None:
    expression = compile_expression("1 / rate if rate else 0", params={"rate": 0})

    assert expression({}) == 0


def test_constant_parts_with_params_are_computed_once() -> None:
    expression = compile_expression("price * (1 + vat / 100)", params={"vat": 19})

    assert expression({"price": 100}) == pytest.approx(119.0)


def test_compiled_expression_survives_pickling() -> None:
    expression = compile_expression("price * markup", params={"markup": 2})

    clone = pickle.loads(pickle.dumps(expression))

    assert clone({"price": 4}) == 8
    assert clone.text == "price * markup"


# --------------------------------------------------------------------------- functions
FUNCTION_CASES = [
    ("format_date(x, '%d.%m.%Y')", {"x": date(2026, 11, 21)}, "21.11.2026"),
    ("round(x, 2)", {"x": 2.675}, 2.68),
    ("round(x, 2)", {"x": Decimal("2.675")}, Decimal("2.68")),
    ("round(x)", {"x": 2.5}, 3),
    ("round(x)", {"x": -2.5}, -3),
    ("round(x, 1)", {"x": 12.34}, 12.3),
    ("round(x, -2)", {"x": 1250}, 1300),
    ("abs(x)", {"x": -4.5}, 4.5),
    ("min(x, 2, None)", {"x": 3}, 2),
    ("max(x)", {"x": [1, 7, 3]}, 7),
    ("min(x, y)", {"x": None, "y": None}, None),
    ("int(x)", {"x": " 12.9 "}, 12),
    ("int(x)", {"x": -3.7}, -3),
    ("float(x)", {"x": "1.5e3"}, 1500.0),
    ("float(x)", {"x": ""}, None),
    ("number(x, ',')", {"x": "1.234,56"}, 1234.56),
    ("number(x)", {"x": "1,234.5"}, 1234.5),
    ("decimal(x, ',')", {"x": "1.234,56"}, Decimal("1234.56")),
    ("decimal(x)", {"x": 0.1}, Decimal("0.1")),
    ("str(x)", {"x": 12}, "12"),
    ("str(x)", {"x": Decimal("1E+2")}, "100"),
    ("str(x)", {"x": date(2024, 3, 1)}, "2024-03-01"),
    ("upper(x)", {"x": "straße"}, "STRASSE"),
    ("lower(x)", {"x": "ABC"}, "abc"),
    ("trim(x)", {"x": "  a b  "}, "a b"),
    ("len(x)", {"x": "Müller"}, 6),
    ("substr(x, 2, 3)", {"x": "abcdef"}, "bcd"),
    ("substr(x, 3)", {"x": "abcdef"}, "cdef"),
    ("substr(x, -2)", {"x": "abcdef"}, "ef"),
    ("replace(x, '.', '')", {"x": "1.234.567"}, "1234567"),
    ("coalesce(x, y, 'n/a')", {"x": None, "y": ""}, "n/a"),
    ("coalesce(x, 'n/a')", {"x": 0}, 0),
    ("concat(x, '-', 7, None)", {"x": "A"}, "A-7"),
    ("contains(x, 'll')", {"x": "Halle"}, True),
    ("startswith(x, 'Ha')", {"x": "Halle"}, True),
    ("endswith(x, 'x')", {"x": "Halle"}, False),
    ("lpad(x, 6, '0')", {"x": 42}, "000042"),
    ("rpad(x, 4)", {"x": "ab"}, "ab  "),
    ("lpad(x, 2)", {"x": "abcd"}, "abcd"),
    ("date(x)", {"x": "2024-02-29"}, date(2024, 2, 29)),
    ("date(x)", {"x": "29.02.2024"}, date(2024, 2, 29)),
    ("date(x)", {"x": "2024-02-29T23:59:00+01:00"}, date(2024, 2, 29)),
    ("date(x)", {"x": datetime(2024, 2, 29, 8, 0)}, date(2024, 2, 29)),
    ("date(x)", {"x": ""}, None),
    ("year(x)", {"x": "31.12.2023"}, 2023),
    ("month(x)", {"x": date(2024, 7, 4)}, 7),
    ("day(x)", {"x": "2024-07-04"}, 4),
    ("days_between(x, y)", {"x": "01.01.2024", "y": "2024-03-01"}, 60),
    ("is_empty(x)", {"x": ""}, True),
    ("is_empty(x)", {"x": 0}, False),
    ("upper(x)", {"x": None}, None),
    ("today() - x", {"x": date.today()}, timedelta(0)),
]


@pytest.mark.parametrize(
    ("text", "record", "expected"), FUNCTION_CASES, ids=[f"{c[0]}-{c[1]}" for c in FUNCTION_CASES]
)
def test_function_gives_what_the_reference_says(
    text: str, record: dict[str, Any], expected: Any
) -> None:
    result = evaluate(text, record)

    assert result == expected
    assert type(result) is type(expected)


def test_every_whitelisted_function_is_exercised() -> None:
    used = {text.split("(")[0] for text, _, _ in FUNCTION_CASES} | {"today", "now"}

    assert set(FUNCTIONS) <= used


def test_today_and_now_are_local_naive() -> None:
    now = evaluate("now()")

    assert evaluate("today()") == date.today()
    assert now.tzinfo is None
    assert abs(now - datetime.now()) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("text", "record", "message"),
    [
        ("date(x)", {"x": "2024-02-30"}, "date(): cannot read '2024-02-30' as a date"),
        ("number(x)", {"x": "12,5"}, "number(): cannot read '12,5' as a number"),
        ("decimal(x, ';')", {"x": "1"}, "decimal(): decimal separator must be '.' or ','"),
        ("substr(x, 0)", {"x": "abc"}, "substr(): start is 1-based"),
        ("substr(x, 1.5)", {"x": "abc"}, "substr(): start must be a whole number"),
        ("abs(x)", {"x": "3"}, "abs() needs a number, got str"),
        ("round(x, 200)", {"x": 1.5}, "round(): n must be between -100 and 100"),
        ("lpad(x, 10**7)", {"x": "a"}, "lpad(): result would be too long"),
        ("lpad(x, 3, 'ab')", {"x": "a"}, "lpad(): char must be one character"),
        ("replace(x, '', y)", {"x": "a" * 1000, "y": "b" * 1000}, "replace(): result would be"),
        ("concat(x, x)", {"x": "a" * 600_000}, "concat(): result would be too long"),
        ("int(x)", {"x": "1e999999"}, "int(): 1E+999999 is too large"),
        ("min(x, y)", {"x": "a", "y": 1}, "min() failed:"),
    ],
)
def test_function_misuse_gives_a_clear_message(
    text: str, record: dict[str, Any], message: str
) -> None:
    error = evaluation_error(text, record)

    assert error.message.startswith(message)
    assert error.position is None


def test_function_arity_is_checked_before_running() -> None:
    assert rejection("upper(a, b)").message == "upper() takes 1 argument, got 2"
    assert rejection("today(1)").message == "today() takes no arguments, got 1"
    assert rejection("min()").message == "min() takes at least 1 argument, got 0"


def test_function_names_are_only_functions_when_called() -> None:
    assert evaluate("upper + 1", {"upper": 1}) == 2


@pytest.mark.parametrize(
    ("x", "y", "floored"),
    [
        (Decimal("-11.35"), 1, Decimal("-12")),
        (Decimal("11.35"), 1, Decimal("11")),
        (Decimal("-12"), 1, Decimal("-12")),
        (Decimal("11.35"), -2, Decimal("-6")),
        (Decimal("-11.35"), -2, Decimal("5")),
        (-11.35, 1, -12.0),
        (-7, 2, -4),
    ],
)
def test_floor_division_floors_decimals_like_floats(x: Any, y: int, floored: Any) -> None:
    """Python's Decimal ``//`` truncates toward zero; the expression language floors."""
    assert evaluate("x // y", {"x": x, "y": y}) == floored
    assert evaluate(f"x // {y}", {"x": x}) == floored


@pytest.mark.parametrize(
    ("value", "pattern", "text"),
    [
        (datetime(2026, 11, 21, 9, 5, 7), "%Y-%m-%d-%H%M", "2026-11-21-0905"),
        (date(2026, 11, 21), "%d.%m.%Y", "21.11.2026"),
        ("2026-11-21T09:05:00", "%H:%M:%S", "09:05:00"),
        ("21.11.2026", "%Y%m%d", "20261121"),
        (date(2026, 11, 21), "%a %d %b %Y, 100%%", "Sat 21 Nov 2026, 100%"),
        (None, "%Y", None),
    ],
)
def test_format_date_writes_dates_and_times_as_text(value: Any, pattern: str, text: Any) -> None:
    assert evaluate("format_date(d, p)", {"d": value, "p": pattern}) == text


@pytest.mark.parametrize("pattern", ["%c", "%s", "%Z", "%", "x" * 65, 42])
def test_format_date_refuses_patterns_outside_the_allow_list(pattern: Any) -> None:
    with pytest.raises(ExpressionError, match="format_date"):
        evaluate("format_date(today(), p)", {"p": pattern})
