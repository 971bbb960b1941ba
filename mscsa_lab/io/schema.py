"""The expected shape of data read from a file (a profile's TOML, a run's ``model.json``, a
checkpoint header), checked field by field so that a bad file gives one message naming the field
(``'metrics' must be a table of numbers, got a list: [1]``) instead of an ``AttributeError`` deep in
the code that used it.

A schema is a ``Field`` tree built with the small constructors below::

    PROFILE = table({"name": text(required=True, length=(1, 64)), "paper": mapping(number(low=0))})
    clean = check(data, PROFILE, where="profile file 'mine.toml'", error=ProfileError)

Tables keep unknown keys unless ``closed=True``; ``anything`` accepts any JSON/TOML value up to a
nesting depth, for free-form parts (a run's training settings) that are only displayed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from mscsa_lab.errors import UserError

__all__ = ["SchemaError", "Field", "text", "integer", "number", "boolean", "sequence", "table", "mapping",
           "anything", "one_of", "check", "describe_value", "MAX_DEPTH"]

MAX_DEPTH = 16  # nesting allowed in free-form parts; deeper is refused rather than walked


class SchemaError(UserError, ValueError):
    """Data whose shape does not match its schema; ``field`` is the dotted name of the culprit."""

    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Field:
    """What one value must be. ``kind``: text, integer, number, boolean, sequence, table, mapping,
    anything or one_of. ``low``/``high`` bound numbers (``open_low``: low itself excluded);
    ``length`` bounds the length of text, sequences and mappings."""

    kind: str
    required: bool = False
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    length: tuple[int, int] | None = None
    choices: tuple[Any, ...] = ()
    items: "Field | None" = None  # sequence elements, mapping values
    fields: Mapping[str, "Field"] | None = None  # table: the known keys
    closed: bool = False  # table: unknown keys refused
    options: tuple["Field", ...] = ()  # one_of
    what: str = ""  # how the message names the expected value, when the default is not clear enough


def text(required: bool = False, length: tuple[int, int] = (0, 10_000), choices: tuple[str, ...] = (),
         nullable: bool = False, what: str = "") -> Field:
    return Field("text", required, nullable, length=length, choices=choices, what=what)


def integer(low: int | None = None, high: int | None = None, required: bool = False, nullable: bool = False,
            what: str = "") -> Field:
    return Field("integer", required, nullable, low=low, high=high, what=what)


def number(low: float | None = None, high: float | None = None, open_low: bool = False, required: bool = False,
           nullable: bool = False, what: str = "") -> Field:
    return Field("number", required, nullable, low=low, high=high, open_low=open_low, what=what)


def boolean(required: bool = False, nullable: bool = False) -> Field:
    return Field("boolean", required, nullable)


def sequence(items: Field, length: tuple[int, int] = (0, 100_000), required: bool = False, nullable: bool = False,
             what: str = "") -> Field:
    return Field("sequence", required, nullable, items=items, length=length, what=what)


def table(fields: Mapping[str, Field], closed: bool = False, required: bool = False, nullable: bool = False,
          what: str = "") -> Field:
    return Field("table", required, nullable, fields=dict(fields), closed=closed, what=what)


def mapping(values: Field, length: tuple[int, int] = (0, 100_000), required: bool = False, nullable: bool = False,
            what: str = "") -> Field:
    return Field("mapping", required, nullable, items=values, length=length, what=what)


def anything(required: bool = False, what: str = "") -> Field:
    return Field("anything", required, True, what=what)


def one_of(*options: Field, required: bool = False, nullable: bool = False, what: str = "") -> Field:
    return Field("one_of", required, nullable, options=options, what=what)


def describe_value(value: Any, limit: int = 40) -> str:
    """``a list: [1]``: the kind of a value and a short excerpt of it, for messages."""
    kinds = {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "a table", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return f"{kind}: {shown}" if value is not None else kind


def _expected(spec: Field) -> str:
    if spec.what:
        return spec.what
    if spec.kind == "sequence" and spec.items is not None:
        return f"a list of {_plural(_expected(spec.items))}"
    if spec.kind == "mapping" and spec.items is not None:
        return f"a table of {_plural(_expected(spec.items))}"
    if spec.kind == "one_of":
        return " or ".join(_expected(option) for option in spec.options)
    return {"text": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
            "table": "a table", "anything": "a value"}[spec.kind]


def _plural(expected: str) -> str:
    for article in ("a ", "an "):
        if expected.startswith(article):
            noun = expected[len(article):]
            return noun.replace("string", "strings", 1).replace("number", "numbers", 1).replace("table", "tables", 1)
    return expected


def _name(path: str) -> str:
    return f"'{path}'" if path else "the file's content"


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _range_text(spec: Field) -> str:
    low = "" if spec.low is None else f"{spec.low:g}"
    high = "" if spec.high is None else f"{spec.high:g}"
    if spec.kind == "integer" and spec.low is not None and spec.high is not None:
        return f"choose {low}..{high}"
    if spec.low is not None and spec.high is not None:
        return f"choose a value in {'(' if spec.open_low else '['}{low}, {high}]"
    if spec.low is not None:
        return f"choose a value {'above' if spec.open_low else 'of at least'} {low}"
    return f"choose a value of at most {high}"


def _depth_ok(value: Any, limit: int) -> bool:
    """True when ``value`` nests at most ``limit`` containers deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def _check(value: Any, spec: Field, path: str) -> Any:
    def fail(detail: str) -> SchemaError:
        return SchemaError(f"{_name(path)} {detail}", path)

    if value is None:
        if spec.nullable:
            return None
        raise fail(f"must be {_expected(spec)}, got null")
    kind = spec.kind
    if kind == "anything":
        if not _depth_ok(value, MAX_DEPTH):
            raise fail(f"is nested more than {MAX_DEPTH} levels deep")
        return value
    if kind == "one_of":
        for option in spec.options:
            try:
                return _check(value, option, path)
            except SchemaError:
                continue
        raise fail(f"must be {_expected(spec)}, got {describe_value(value)}")
    if kind == "text":
        if not isinstance(value, str):
            raise fail(f"must be {_expected(spec)}, got {describe_value(value)}")
        if spec.choices and value not in spec.choices:
            raise fail(f"is {describe_value(value).split(': ', 1)[-1]}: choose one of {list(spec.choices)}")
    elif kind in ("integer", "number"):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (kind == "integer" and not isinstance(value, int)):
            raise fail(f"must be {_expected(spec)}, got {describe_value(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(f"must be a finite number, got {value!r}")
        below = spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low)
        if below or (spec.high is not None and value > spec.high):
            shown = value if abs(value) < 1e15 else f"{value:.3g}"
            raise SchemaError(f"{_name(path)}={shown} is out of range: {_range_text(spec)}", path)
        return value
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise fail(f"must be true or false, got {describe_value(value)}")
    elif kind == "sequence":
        if not isinstance(value, (list, tuple)):
            raise fail(f"must be {_expected(spec)}, got {describe_value(value)}")
        value = [_check(item, spec.items, _join(path, index)) for index, item in enumerate(value)] \
            if spec.items is not None else list(value)
    elif kind in ("table", "mapping"):
        if not isinstance(value, dict):
            raise fail(f"must be {_expected(spec)}, got {describe_value(value)}")
        value = _check_table(value, spec, path) if kind == "table" else {
            key: _check(item, spec.items, _join(path, key)) for key, item in _string_keys(value, path)}
    if spec.length is not None and kind in ("text", "sequence", "mapping"):
        low, high = spec.length
        if not low <= len(value) <= high:
            unit = "characters" if kind == "text" else "entries"
            if kind == "text" and low == 1 and len(value) == 0:
                raise fail("must not be empty")
            if low == high:
                raise fail(f"must have exactly {low} {unit}, got {len(value)}")
            raise fail(f"has {len(value)} {unit}: between {low} and {high} are allowed")
    return value


def _string_keys(value: dict, path: str):
    for key, item in value.items():
        if not isinstance(key, str):
            raise SchemaError(f"{_name(path)} has a key that is not a string: {describe_value(key)}", path)
        yield key, item


def _check_table(value: dict, spec: Field, path: str) -> dict:
    known = spec.fields or {}
    unknown = [key for key in value if key not in known]
    if spec.closed and unknown:
        listed = ", ".join(repr(str(key)[:40]) for key in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        where = f"in {_name(path)}" if path else "at the top level"
        raise SchemaError(f"unknown key(s) {listed} {where}; known: {', '.join(sorted(known))}", path)
    missing = [key for key, item in known.items() if item.required and key not in value]
    if missing:
        raise SchemaError(f"{_name(_join(path, missing[0]))} is missing: it is required", _join(path, missing[0]))
    clean = {}
    for key, item in _string_keys(value, path):
        clean[key] = _check(item, known[key], _join(path, key)) if key in known else \
            _check(item, Field("anything"), _join(path, key))
    return clean


def check(data: Any, schema: Field, where: str = "", error: type[Exception] = SchemaError) -> Any:
    """``data`` checked against ``schema`` (sequences as lists), or ``error`` with a
    message that starts with ``where`` (the file) and names the field."""
    try:
        return _check(data, schema, "")
    except SchemaError as problem:
        message = f"{where}: {problem}" if where else str(problem)
        if error is SchemaError:
            raise SchemaError(message, problem.field) from None
        raised = error(message)
        raised.field = problem.field  # type: ignore[attr-defined]
        raise raised from None
