"""SPEC §2 line by line: every fact type, valid and each way of being invalid."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ledger.errors import InvalidFactError
from ledger.feed import (
    FACT_TYPES,
    MAX_LINE_BYTES,
    MAX_NESTING,
    SCHEMAS,
    iso,
    load_object,
    parse_line,
    parse_time,
    validate,
)
from tests.examples import ENUM_FIELDS, EXAMPLES, NAME, PERSONAL_VALUES, line

ALL_TYPES = sorted(EXAMPLES)
REQUIRED = [(t, name) for t in ALL_TYPES for name in SCHEMAS[t][0]]
ENUMS = [(t, name) for t, names in ENUM_FIELDS.items() for name in names]


def _invalid(obj: dict[str, Any]) -> str:
    with pytest.raises(InvalidFactError) as caught:
        validate(obj)
    message = str(caught.value)
    for value in PERSONAL_VALUES:
        assert value not in message
    return message


def test_the_examples_cover_every_fact_type_of_the_spec() -> None:
    assert set(EXAMPLES) == FACT_TYPES
    assert len(FACT_TYPES) == 20


@pytest.mark.parametrize("fact_type", ALL_TYPES)
def test_valid_example_is_parsed_with_its_fields(fact_type: str) -> None:
    raw = orjson.dumps(line(fact_type, "f-1", minutes=5))
    fact = parse_line(raw, 3)
    assert (fact.id, fact.type) == ("f-1", fact_type)
    assert fact.at == datetime(2025, 1, 10, 9, 5, tzinfo=UTC)
    expected = dict(EXAMPLES[fact_type])
    if "categories" in expected:
        expected["categories"] = sorted(expected["categories"])
    assert fact.data == expected
    assert fact.extra == {}


@pytest.mark.parametrize(("fact_type", "field"), REQUIRED)
def test_missing_required_field_is_invalid_and_named(fact_type: str, field: str) -> None:
    obj = line(fact_type, "f-1")
    del obj[field]
    assert repr(field) in _invalid(obj)


@pytest.mark.parametrize("field", ["id", "type", "at"])
def test_missing_envelope_field_is_invalid(field: str) -> None:
    obj = line("order.delivered", "f-1")
    del obj[field]
    assert f"missing required field {field!r}" == _invalid(obj)


@pytest.mark.parametrize(("fact_type", "field"), ENUMS)
@pytest.mark.parametrize("value", ["telepathy", "07700900001", "Lovelace", "ada.lovelace"])
def test_an_unknown_choice_is_invalid_and_not_repeated(
    fact_type: str, field: str, value: str
) -> None:
    """What stands where a choice belongs may be anything (a shifted column puts a phone
    number or a name there, with no personal field on that line to recognise it by): the
    error names the field and the choices, never the value."""
    obj = line(fact_type, "f-1")
    obj[field] = [value] if field == "categories" else value
    message = _invalid(obj)
    assert message.startswith("unknown ") and "(expected one of " in message
    assert value not in message


@pytest.mark.parametrize(("fact_type", "field"), ENUMS)
def test_a_typo_of_a_choice_is_repeated_with_the_choice_it_misspells(
    fact_type: str, field: str
) -> None:
    obj = line(fact_type, "f-1")
    meant = obj[field][0] if field == "categories" else obj[field]
    typo = meant[:-1] + meant[-1] * 2  # "email" -> "emaill"
    obj[field] = [typo] if field == "categories" else typo
    assert _invalid(obj).endswith(f"{typo!r} (did you mean {meant!r}?)")


@pytest.mark.parametrize(
    ("fact_type", "field"),
    [(t, f) for t, f in REQUIRED if not (f == "categories" or (t, f) in set(ENUMS))],
)
def test_wrong_type_of_required_field_is_invalid(fact_type: str, field: str) -> None:
    obj = line(fact_type, "f-1")
    obj[field] = 42
    assert repr(field) in _invalid(obj)


def test_unknown_type_is_invalid() -> None:
    assert _invalid(line("order.delivered", "f-1", type="order.teleported")) == (
        f"unknown type (none of the feed's {len(FACT_TYPES)} types)"
    )
    assert _invalid(line("order.delivered", "f-1", type="order.deliverd")) == (
        "unknown type 'order.deliverd' (did you mean 'order.delivered'?)"
    )
    assert _invalid(line("order.delivered", "f-1", type=7)) == (
        f"unknown type: a number, not text (none of the feed's {len(FACT_TYPES)} types)"
    )


@pytest.mark.parametrize("fact_type", ALL_TYPES)
def test_at_without_offset_is_invalid(fact_type: str) -> None:
    obj = line(fact_type, "f-1", at="2025-01-10T09:00:00")
    assert "no UTC offset" in _invalid(obj)


@pytest.mark.parametrize("fact_type", ALL_TYPES)
def test_unknown_extra_fields_are_kept(fact_type: str) -> None:
    extra = {"loyalty_tier": "gold", "notes": {"source": "pos", "n": 3}}
    fact = validate(line(fact_type, "f-1", **extra))
    assert fact.extra == extra
    assert "loyalty_tier" not in fact.data
    assert fact.to_json()["loyalty_tier"] == "gold"


def test_at_is_normalised_to_utc() -> None:
    fact = validate(line("order.delivered", "f-1", at="2025-02-05T16:20:00+01:00"))
    assert fact.at == datetime(2025, 2, 5, 15, 20, tzinfo=UTC)
    assert iso(fact.at) == "2025-02-05T15:20:00Z"


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01T00:00:00Z", "", 1736499600])
def test_at_that_is_not_a_time_is_invalid(text: Any) -> None:
    with pytest.raises(InvalidFactError):
        parse_time(text)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"])
def test_at_beyond_the_years_python_keeps_once_in_utc_is_invalid(text: str) -> None:
    with pytest.raises(InvalidFactError, match="field 'at' is out of range"):
        parse_time(text)


def test_channel_must_belong_to_the_purpose() -> None:
    obj = line("consent.given", "f-1", purpose="personalisation", channel="email")
    assert _invalid(obj) == "purpose 'personalisation' has no channel 'email'"


def test_marketing_contact_channel_must_be_email_or_post() -> None:
    assert "unknown channel 'web'" in _invalid(line("marketing.contact", "f-1", channel="web"))


@pytest.mark.parametrize(
    "total",
    [
        "-1.00",
        "NaN",
        "12,50",
        12.5,
        "Infinity",
        "1" * 41,
        "1E+99999999999999999999",
        "1E+40",  # 41 digits written out
        "9E+999999999999999999",
        "1E-41",  # 0. and 41 digits after the point
    ],
)
def test_order_total_must_be_a_finite_non_negative_decimal_string(total: Any) -> None:
    assert "'total'" in _invalid(line("order.placed", "f-1", total=total))


def test_an_order_total_of_up_to_forty_characters_is_kept_as_given() -> None:
    """The read models keep a total as text of at most 40 characters (PostgreSQL enforces
    it: a longer one, once recorded, would stop them for good)."""
    for total in ("1" * 40, "0." + "5" * 38, "45", "1e3", "1E+39", "1E-40", "0E-99", "0E+99"):
        assert validate(line("order.placed", "f-1", total=total)).data["total"] == total


@pytest.mark.parametrize("currency", ["gbp", "POUNDS", 826, "GBP\n", "GB"])
def test_order_currency_must_be_a_three_letter_code(currency: Any) -> None:
    assert "'currency'" in _invalid(line("order.placed", "f-1", currency=currency))


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("7 Wobble Lane", "must be an object"),
        ({"line1": "7 Wobble Lane", "city": "Tumbleton", "country": "GB"}, "lacks postcode"),
        ({**EXAMPLES["customer.registered"]["address"], "floor": "2"}, "unknown parts 'floor'"),
    ],
)
def test_address_must_have_exactly_its_parts(address: Any, words: str) -> None:
    assert words in _invalid(line("customer.registered", "f-1", address=address))


def test_email_must_look_like_an_email() -> None:
    message = _invalid(line("customer.registered", "f-1", email="zebedee at example"))
    assert message == "field 'email' is not an email address"


def test_phone_is_optional_on_registration() -> None:
    obj = line("customer.registered", "f-1")
    del obj["phone"]
    assert "phone" not in validate(obj).data


def test_customer_updated_must_change_something() -> None:
    obj = line("customer.updated", "f-1")
    del obj["email"]
    assert "names none of" in _invalid(obj)


def test_payment_reason_is_optional() -> None:
    fact = validate(line("payment.authorisation", "f-1", result="refused", reason="do_not_honour"))
    assert fact.data["reason"] == "do_not_honour"


@pytest.mark.parametrize("categories", [[], "name", ["name", "shoe_size"]])
def test_categories_must_be_a_non_empty_list_of_known_categories(categories: Any) -> None:
    _invalid(line("affiliate.disclosure", "f-1", categories=categories))


def test_empty_and_control_characters_in_text_are_invalid() -> None:
    assert "must not be empty" in _invalid(line("order.cancelled", "f-1", reason="  "))
    assert "control characters" in _invalid(line("order.cancelled", "f-1", reason="a\x00b"))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "f-1", "type": ', "not valid JSON"),
        (b"[1, 2]", "a feed line must be a JSON object"),
        (b'"just a string"', "a feed line must be a JSON object"),
    ],
)
def test_line_that_is_not_a_json_object_is_invalid_with_its_number(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidFactError) as caught:
        parse_line(raw, 7)
    assert (caught.value.line, caught.value.reason) == (7, reason)
    assert str(caught.value) == f"line 7: {reason}"


def test_an_overlong_line_is_invalid() -> None:
    raw = orjson.dumps(line("order.cancelled", "f-1", notes="x" * 70_000))
    with pytest.raises(InvalidFactError, match="longer than"):
        parse_line(raw, 1)


def test_errors_never_repeat_personal_data_from_the_line() -> None:
    # A shifted column puts a name where an identifier belongs: the error must not echo it.
    first_name = NAME.split()[0]
    cases = [
        line("customer.registered", "f-1", email=NAME),
        line("consent.given", "f-1", channel=NAME),
        line("consent.given", "f-1", purpose=first_name),
        line(
            "customer.registered",
            "f-1",
            address={**EXAMPLES["customer.registered"]["address"], first_name: "x"},
        ),
        line("order.placed", "f-1", currency=NAME),
        line("customer.updated", "f-1", name=42),
    ]
    for obj in cases:
        obj.setdefault("name", NAME)
        assert first_name not in _invalid(obj)


def test_a_personal_value_that_is_a_word_of_the_contract_leaves_the_reason_whole() -> None:
    """An email 'email' is no secret, and hiding it hid the field's name in the reason."""
    assert _invalid(line("customer.registered", "f-1", email="email")) == (
        "field 'email' is not an email address"
    )


def test_short_identifiers_are_repeated_to_help_fix_a_typo() -> None:
    assert "unknown purpose 'marketting'" in _invalid(
        line("consent.given", "f-1", purpose="marketting")
    )


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_an_unknown_field_nested_too_deep_is_refused_with_its_line() -> None:
    """Kept sealed as JSON, an unknown field's value must be one JSON can write back: past
    its depth limit it failed inside the sealing, with no line number ('unexpected
    TypeError'). Deep but within the limit, it is kept."""
    deep = line("marketing.contact", "m1", extra_data=_nested(MAX_NESTING + 1))
    with pytest.raises(InvalidFactError) as refused:
        parse_line(orjson.dumps(deep), 7)
    assert str(refused.value) == (
        f"line 7: field 'extra_data' is nested more than {MAX_NESTING} levels deep"
    )
    kept = parse_line(orjson.dumps(line("marketing.contact", "m2", extra=_nested(MAX_NESTING))))
    assert orjson.loads(orjson.dumps({"extra": kept.extra}))["extra"] == kept.extra


def _with_raw_field(obj: dict[str, Any], name: str, json_value: str) -> bytes:
    """The line of `obj` with one more field, its value written as given (orjson cannot
    write an integer beyond 64 bits)."""
    return orjson.dumps(obj)[:-1] + f',"{name}":{json_value}}}'.encode()


@pytest.mark.parametrize(
    "json_value",
    ["123456789012345678901234567890", "-9223372036854775809", '[1, {"x": 18446744073709551616}]'],
)
def test_an_integer_beyond_64_bits_is_refused_not_rounded(json_value: str) -> None:
    """orjson reads such an integer as a float, rounded: the unknown field would not be kept
    as it was sent (SPEC §2). The line is refused instead, saying what to do."""
    raw = _with_raw_field(line("marketing.contact", "m1"), "gateway_ref", json_value)
    with pytest.raises(InvalidFactError) as refused:
        parse_line(raw, 4)
    assert str(refused.value) == (
        "line 4: field 'gateway_ref' holds an integer of more than 64 bits, which is not kept "
        "exactly: send it as a string"
    )


@pytest.mark.parametrize(
    ("json_value", "kept"),
    [
        ("18446744073709551615", 2**64 - 1),
        ("-9223372036854775808", -(2**63)),
        ('"1234567890123456789012345"', "1234567890123456789012345"),
        ("1.5e30", 1.5e30),
    ],
)
def test_numbers_orjson_keeps_exactly_are_kept(json_value: str, kept: Any) -> None:
    raw = _with_raw_field(line("marketing.contact", "m1"), "gateway_ref", json_value)
    assert parse_line(raw, 4).extra == {"gateway_ref": kept}


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_the_line_length_limit_is_on_what_the_line_holds(ending: bytes) -> None:
    obj = line("order.delivered", "f-1")
    short = orjson.dumps({**obj, "pad": ""})
    pad = "a" * (MAX_LINE_BYTES - len(short))
    full = orjson.dumps({**obj, "pad": pad})
    assert len(full) == MAX_LINE_BYTES
    assert parse_line(full + ending, 1).extra == {"pad": pad}
    with pytest.raises(InvalidFactError, match="longer than"):
        parse_line(orjson.dumps({**obj, "pad": pad + "a"}) + ending, 1)


def test_a_deep_line_with_a_long_number_in_a_string_is_refused_for_its_depth() -> None:
    """Depth is judged before anything reads the line again (a recursive reader would
    overflow on it): one line error, no crash that hides the file's other errors."""
    obj = line("order.dispatched", "d1", tracking="1234567890123456789012")
    raw = _with_raw_field(obj, "deep", "[" * 600 + "]" * 600)
    with pytest.raises(InvalidFactError) as refused:
        parse_line(raw, 2)
    assert str(refused.value) == (
        f"line 2: field 'deep' is nested more than {MAX_NESTING} levels deep"
    )


def test_a_commands_fact_with_an_integer_beyond_64_bits_is_refused_as_a_lines_is() -> None:
    text = _with_raw_field(line("marketing.contact", "m1"), "gateway_ref", "1" + "0" * 25)
    with pytest.raises(InvalidFactError, match="field 'gateway_ref' holds an integer"):
        load_object(text.decode())
    assert load_object(_with_raw_field(line("marketing.contact", "m1"), "n", "7"))["n"] == 7


def test_a_value_nested_to_the_limit_is_kept_and_can_be_sealed_and_exported() -> None:
    """The limit leaves room for what wraps a kept field when it is sealed or exported."""
    kept = parse_line(_with_raw_field(line("marketing.contact", "m1"), "x", _deep(MAX_NESTING)))
    wrapped = {"pack": [{"fact_id": "m1", "fields": {"other": [kept.extra]}}]}
    assert orjson.loads(orjson.dumps(wrapped)) == wrapped


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels
