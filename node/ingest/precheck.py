"""A fast FHIR R4 conformance check compiled from the fhir.resources models' own metadata.

fhir.resources validates by building a pydantic model per element, with Python-level validators
around each one (``reject_null_complex_elements``, the required-primitive and choice-type checks,
``fhir_model_validator``): ~5,000-8,000 resources/s per core.  This module reads the same models
once — each field's alias, list-or-single cardinality, type, ``is_required()``,
``element_required`` and ``one_of_many`` groups (FHIR's ``value[x]`` choices) — and compiles them
into plain functions that walk the parsed JSON dict without building any object.

:func:`conforms` answers only "certainly valid": every value it accepts is one fhir.resources
accepts (checked against the same regexes of the FHIR primitive types, fhir_core.types; the
same calendar checks; strict JSON types only).  Anything else — a real error, or input the
models take only through pydantic's lax coercions (``"5"`` for an integer, ``"true"`` for a
boolean), a primitive's ``_extension`` sibling, a ``contained`` resource — makes it answer
``False``, and the caller asks fhir.resources, whose verdict and message are final
(:func:`node.ingest.validate.problem`).  So the verdict on every resource is fhir.resources',
and only the valid bulk of an export takes the fast path.
"""

from __future__ import annotations

import calendar
import re
import typing
from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from fhir_core import constraints as fhir_constraints
from fhir_core import types as fhir_types
from pydantic import TypeAdapter, ValidationError

Check = typing.Callable[[object], bool]

# The primitive types' regexes, as fhir_core.types declares them (pydantic applies a ``pattern``
# with search semantics; ``fullmatch`` here accepts a subset of what that accepts).
_STRING = re.compile(r"[ \r\n\t\S]+")
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(fhir_constraints.TYPES_ID_PATTERN.strip("^$"))
_ID_MAX = fhir_constraints.TYPES_ID_MAX_LENGTH
_DECIMAL = fhir_types.Decimal.pattern
_DATE = fhir_types.Date.pattern
_DATETIME = fhir_types.DateTime.pattern
_INSTANT = fhir_types.Instant.pattern
_FRACTION = re.compile(r"\.([0-9]+)")


def _boolean(value: object) -> bool:
    return type(value) is bool


def _string(value: object) -> bool:
    # a first character that is not whitespace is the pattern's \S: no need to run the regex
    return type(value) is str and value != "" and (not value[0].isspace() or _STRING.search(value) is not None)


def _any_string(value: object) -> bool:  # uri, canonical, markdown: their patterns match any text
    return type(value) is str


def _code(value: object) -> bool:
    # printable text without a space holds no whitespace at all (tabs, line ends and Unicode spaces
    # are not printable): then the pattern matches without running it
    return type(value) is str and value != "" and (
        (value.isprintable() and " " not in value) or _CODE.fullmatch(value) is not None)


def _id(value: object) -> bool:
    return type(value) is str and len(value) <= _ID_MAX and _ID.fullmatch(value) is not None


def _decimal(value: object) -> bool:
    t = type(value)
    return (t is int or t is float) and _DECIMAL.fullmatch(str(value)) is not None


def _integer(low: int, high: int) -> Check:
    def check(value: object) -> bool:
        return type(value) is int and low <= value <= high
    return check


def _calendar_day(value: str) -> bool:
    """``YYYY-MM-DD...``: the day exists (the regexes allow 02-31)."""
    day = int(value[8:10])
    return day <= 28 or day <= calendar.monthrange(int(value[:4]), int(value[5:7]))[1]


def _time_part(value: str) -> bool:
    """``...Thh:mm:ss[.f]...``: no leap second (fhir_core keeps those as text: left to it) and at
    most microsecond precision (what Python's datetime holds)."""
    if value[17:19] == "60":
        return False
    fraction = _FRACTION.search(value, 19)
    return fraction is None or len(fraction.group(1)) <= 6


def _date(value: object) -> bool:
    if type(value) is not str or _DATE.fullmatch(value) is None:
        return False
    return len(value) < 10 or _calendar_day(value)


def _datetime(value: object) -> bool:
    if type(value) is not str or _DATETIME.fullmatch(value) is None:
        return False
    if len(value) < 10:
        return True  # YYYY or YYYY-MM: fhir_core keeps the text
    return _calendar_day(value) and (len(value) == 10 or _time_part(value))


def _instant(value: object) -> bool:
    return type(value) is str and _INSTANT.fullmatch(value) is not None and _calendar_day(value) \
        and _time_part(value)


def _never(value: object) -> bool:
    return False


def _exactly(annotation) -> Check:
    """The primitives without a hand-written check (url, oid, uuid, time, base64Binary, xhtml):
    pydantic's own validator of the field's type, so the verdict is the model's."""
    adapter = TypeAdapter(annotation)

    def check(value: object) -> bool:
        if type(value) is not str:
            return False
        try:
            adapter.validate_python(value)
        except (ValidationError, ValueError, TypeError):
            return False
        return True
    return check


_BY_MARKER: dict[type, Check] = {
    fhir_types.String: _string, fhir_types.Code: _code, fhir_types.Id: _id,
    fhir_types.Uri: _any_string, fhir_types.Canonical: _any_string, fhir_types.Markdown: _any_string,
    fhir_types.Decimal: _decimal, fhir_types.Date: _date, fhir_types.DateTime: _datetime,
    fhir_types.Instant: _instant,
}


def _primitive(annotation) -> Check:
    """The check of an ``Annotated[python type, fhir_core marker]`` field type."""
    marker = next((m for m in typing.get_args(annotation)[1:]), None)
    check = _BY_MARKER.get(type(marker))
    if check is not None:
        return check
    if isinstance(marker, (fhir_types.Integer, fhir_types.Integer64)):
        bounds = {type(m).__name__: m for m in marker}
        return _integer(bounds["Ge"].ge, bounds["Le"].le)
    return _exactly(annotation)


def _unwrap(annotation) -> tuple[bool, object]:
    """``(is a list, element type)`` of a field's annotation (``Optional`` removed)."""
    if typing.get_origin(annotation) is typing.Union or type(annotation).__name__ == "UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return False, None
        annotation = args[0]
    if typing.get_origin(annotation) in (list, typing.List):
        # a primitive list's element is Optional (a null lines a value up with its _extension)
        return True, _unwrap(typing.get_args(annotation)[0])[1]
    return False, annotation


class _Model:
    """The compiled check of one FHIR model class (a resource, a data type or a backbone element)."""

    def __init__(self, klass):
        self.klass = klass
        #: alias -> (is a list, check of one value, its choice group); compiled on first use (types recurse)
        self.fields: dict[str, tuple[bool, Check, str | None]] | None = None
        self.required: tuple[str, ...] = ()
        self.required_choices: tuple[str, ...] = ()

    def _compile(self) -> None:
        fields: dict[str, tuple[bool, Check, str | None]] = {}
        required, required_choices = [], set()
        for name, info in self.klass.model_fields.items():
            alias = info.alias or name
            extra = info.json_schema_extra or {}
            if name.endswith("__ext") or not extra.get("element_property"):
                continue  # _primitive extensions and fhir_comments: left to fhir.resources
            many, element = _unwrap(info.annotation)
            choice = extra.get("one_of_many") or None
            fields[alias] = (many, _check_of(element), choice)
            if info.is_required() or extra.get("element_required"):
                required.append(alias)
            if choice and extra.get("one_of_many_required") is True:
                required_choices.add(choice)
        self.required = tuple(required)
        self.required_choices = tuple(sorted(required_choices))
        self.fields = fields

    def __call__(self, value: object) -> bool:
        if type(value) is not dict:
            return False  # fhir.resources would parse a JSON string here; too odd to take fast
        if self.fields is None:
            self._compile()
        return self._members(value)

    def _members(self, value: dict) -> bool:
        fields = self.fields
        chosen = None  # the choice groups (value[x]) that have a value
        for key, item in value.items():
            spec = fields.get(key)
            if spec is None or item is None:
                return False
            many, check, choice = spec
            if many:
                if type(item) is not list:
                    return False
                for element in item:
                    if element is None or not check(element):
                        return False
            elif not check(item):
                return False
            if choice is not None:
                if chosen is None:
                    chosen = {choice}
                elif choice in chosen:
                    return False  # two types of one choice
                else:
                    chosen.add(choice)
        for key in self.required:
            if key not in value:
                return False
        for choice in self.required_choices:
            if chosen is None or choice not in chosen:
                return False
        return True


class _Resource(_Model):
    """A resource at the top of an input: ``resourceType`` names it (nested resources are left to
    fhir.resources)."""

    def _compile(self) -> None:
        super()._compile()
        name = self.klass.__resource_type__
        self.fields["resourceType"] = (False, lambda value: type(value) is str and value == name, None)


@lru_cache(maxsize=None)
def _model(klass) -> _Model:
    return _Model(klass)


@lru_cache(maxsize=None)
def _check_of(annotation) -> Check:
    if annotation is bool:
        return _boolean
    if typing.get_origin(annotation) is typing.Annotated:
        return _primitive(annotation)
    if isinstance(annotation, type) and issubclass(annotation, fhir_types.FhirBase):
        if issubclass(annotation, fhir_types.FhirElementOrResourceBase):
            return _never  # Resource / Element polymorphism (contained): fhir.resources decides
        return _model(annotation.get_model_klass())
    return _never


@lru_cache(maxsize=None)
def _resource(resource_type: str) -> _Resource | None:
    try:
        return _Resource(get_fhir_model_class(resource_type))
    except (ValueError, KeyError, AttributeError):
        return None


def conforms(resource: dict) -> bool:
    """True when fhir.resources certainly accepts ``resource`` (an R4 resource as parsed JSON);
    False when it may not (then ask it: :func:`node.ingest.validate.problem`)."""
    resource_type = resource.get("resourceType")
    check = _resource(resource_type) if type(resource_type) is str else None
    return check is not None and check(resource)
