"""A fast FHIR R4 conformance check compiled from the fhir.resources models' own metadata.

fhir.resources validates by building a pydantic model per element, with Python-level validators
around each one (``reject_null_complex_elements``, the required-primitive and choice-type checks,
``fhir_model_validator``): ~5,000-8,000 resources/s per core.  This module reads the same models
once — each field's alias, list-or-single cardinality, type, ``is_required()``,
``element_required`` and ``one_of_many`` groups (FHIR's ``value[x]`` choices) — and compiles them
into plain functions that walk the parsed JSON dict without building any object.

It compiles one function per *shape*: a model (say Coding) and the exact tuple of keys an element
has, in order (``("system", "code", "display")``).  An export repeats a few shapes of each type
millions of times, so what depends on the keys alone — every key is an element of the model, the
required ones are there, at most one type of each choice (``value[x]``) — is decided once, when a
shape is first met, and the compiled function only checks the values: it unpacks them
(``v0, v1, v2 = value.values()``) and runs each one's check inline (a type test and the primitive's
regex, a loop over a list, a nested element's checks for the shape it had when the function was
compiled, else a call of that element's shape function), with no look-up per key and no Python
call per primitive.  Which function to run is one dict look-up of ``tuple(value)``.

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
import functools
import itertools
import re
import typing

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


def _decimal(value: object) -> bool:
    t = type(value)
    return (t is int or t is float) and _DECIMAL.fullmatch(str(value)) is not None


# A float's repr always matches the decimal pattern unless it is inf or nan ("1e+300", "-0.0",
# "1.5e-05", "0.134"; tests/test_fhir_validator.py compares the two): ``x - x == 0.0`` tells the
# finite ones without formatting the number.  Ints (and anything else) take the pattern.
_DECIMAL_EXPRESSION = "((type({x}) is float and {x} - {x} == 0.0) or _decimal({x}))"


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


# The forms nearly every date and time of an export has, as a pattern that accepts a subset of what
# the checks above accept: a day every month has (01-28; a later day takes the calendar check),
# whole or up to microsecond seconds without a leap second, a time zone.  It costs a third of the
# FHIR pattern alone (tests/test_fhir_validator.py checks the subset).
_COMMON_DAY = r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
_COMMON_TIME = (r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
                r"(?:Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)")
_COMMON_DATE = re.compile(_COMMON_DAY)
_COMMON_DATETIME = re.compile(f"{_COMMON_DAY}(?:{_COMMON_TIME})?")
_COMMON_INSTANT = re.compile(_COMMON_DAY + _COMMON_TIME)


def _common_first(common: re.Pattern, check: Check) -> Check:
    """``check`` of a ``str``, its common forms told by ``common`` alone."""
    def check_common_first(value: str) -> bool:
        return common.fullmatch(value) is not None or check(value)
    return check_common_first


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


#: The names the compiled functions see (their globals): the checks they call, the compiled regexes'
#: methods, and each model's shape table and learner (``_s<n>``, ``_l<n>``, added as models are made).
_NAMESPACE: dict[str, object] = {
    "_decimal": _decimal,
    "_STRING_search": _STRING.search, "_CODE_fullmatch": _CODE.fullmatch, "_ID_fullmatch": _ID.fullmatch,
}
_names = itertools.count()

#: How many valid values a remembered check keeps before it starts afresh.
_REMEMBERED = 100_000


def _remembered(check: Check) -> str:
    """``check`` as an expression that first looks the value up among the texts it has passed.  The
    dates and times of an export repeat (every observation of a study has the study's date: 92 % of
    the synthetic export's dateTimes, 68 % of Synthea's, were met before), and a set look-up costs
    ~20 ns against ~200 ns for the common forms' pattern (~600-1,100 ns for the FHIR pattern and
    calendar checks).  Only passed values are kept, only exact ``str`` ones, so the answer is the
    check's own."""
    n = next(_names)
    passed: set[str] = set()

    def check_and_keep(value: str) -> bool:
        if not check(value):
            return False
        if len(passed) >= _REMEMBERED:
            passed.clear()
        passed.add(value)
        return True

    _NAMESPACE[f"_passed{n}"], _NAMESPACE[f"_check{n}"] = passed, check_and_keep
    return f"(type({{x}}) is str and ({{x}} in _passed{n} or _check{n}({{x}})))"


# The check of one value, as a Python expression over the variable ``{x}`` (inlined where it is used;
# every one is False for None and for a value of the wrong JSON type).
_BOOLEAN = "type({x}) is bool"
_NEVER = "False"
_BY_MARKER: dict[type, str] = {
    # a first character that is not whitespace is the pattern's \S: no need to run the regex
    fhir_types.String: '(type({x}) is str and {x} != "" and (not {x}[0].isspace() or _STRING_search({x}) is not None))',
    # printable text without a space holds no whitespace at all (tabs, line ends and Unicode spaces
    # are not printable): then the pattern matches without running it
    fhir_types.Code: '(type({x}) is str and {x} != "" and (({x}.isprintable() and " " not in {x}) '
                     'or _CODE_fullmatch({x}) is not None))',
    fhir_types.Id: f'(type({{x}}) is str and len({{x}}) <= {_ID_MAX} and _ID_fullmatch({{x}}) is not None)',
    # uri, canonical, markdown: their patterns match any text
    fhir_types.Uri: "type({x}) is str", fhir_types.Canonical: "type({x}) is str",
    fhir_types.Markdown: "type({x}) is str",
    fhir_types.Decimal: _DECIMAL_EXPRESSION, fhir_types.Date: _remembered(_common_first(_COMMON_DATE, _date)),
    fhir_types.DateTime: _remembered(_common_first(_COMMON_DATETIME, _datetime)),
    fhir_types.Instant: _remembered(_common_first(_COMMON_INSTANT, _instant)),
}


def _primitive(annotation) -> str:
    """The check of an ``Annotated[python type, fhir_core marker]`` field type."""
    marker = next((m for m in typing.get_args(annotation)[1:]), None)
    check = _BY_MARKER.get(type(marker))
    if check is not None:
        return check
    if isinstance(marker, (fhir_types.Integer, fhir_types.Integer64)):
        bounds = {type(m).__name__: m for m in marker}
        return f"(type({{x}}) is int and {int(bounds['Ge'].ge)} <= {{x}} <= {int(bounds['Le'].le)})"
    name = f"_exactly{next(_names)}"
    _NAMESPACE[name] = _exactly(annotation)
    return name + "({x})"


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


def _reject(value: dict) -> bool:
    """The shape function of a shape the model rejects whatever the values (an unknown key, a missing
    required element, two types of one choice)."""
    return False


#: Shapes remembered per model.  An export has a few dozen per type; past this (input built to vary
#: its keys), a new shape is left to fhir.resources rather than compiled each time it is met.
_SHAPES_KEPT = 1_000

#: How deep a shape function inlines the elements it holds (an Observation's component's code's
#: coding is three levels down); past it, and for shapes other than the one inlined, it calls theirs.
_INLINED_LEVELS = 4

#: A field's check of one value: a primitive's expression over ``{x}``, or the model of an element.
Element = typing.Union[str, "_Model"]


class _Model:
    """The compiled check of one FHIR model class (a resource, a data type or a backbone element):
    its shape table, ``tuple(keys) -> shape function``, filled as shapes are met (:meth:`learn`)."""

    def __init__(self, klass, resource_type: str | None = None):
        self.klass = klass
        #: the resource at the top of an input: ``resourceType`` names it (nested resources are left
        #: to fhir.resources)
        self.resource_type = resource_type
        self.shapes: dict[tuple, typing.Callable[[dict], bool]] = {}
        n = next(_names)
        _NAMESPACE[f"_s{n}"], _NAMESPACE[f"_l{n}"] = self.shapes.get, self.learn
        #: the check of one value of this model where no shape is inlined: the value's shape
        #: function, or the learner for a shape not met yet
        self.expression = f"(type({{x}}) is dict and (_s{n}(tuple({{x}})) or _l{n})({{x}}))"
        #: alias -> (is a list, check of one value, its choice group); read from the model on first
        #: use (types recurse)
        self.fields: dict[str, tuple[bool, Element, str | None]] | None = None
        self.required: tuple[str, ...] = ()
        self.required_choices: frozenset[str] = frozenset()

    def _read_fields(self) -> None:
        fields: dict[str, tuple[bool, Element, str | None]] = {}
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
        if self.resource_type is not None:
            fields["resourceType"] = (False, f"(type({{x}}) is str and {{x}} == {self.resource_type!r})", None)
        self.required = tuple(required)
        self.required_choices = frozenset(required_choices)
        self.fields = fields

    def learn(self, value: dict) -> bool:
        """The check of a dict whose shape is not in the table yet.

        A shape's function is compiled twice: first calling its elements' own shape functions, which
        learns the shapes this value's elements have; then, when the shape is met again, with the
        shapes that value's elements have inlined where they are known (an element of another shape
        still calls its own), as the values of one shape in an export mostly hold elements of the
        same shapes.  A shape met once is compiled once."""
        if len(self.shapes) >= _SHAPES_KEPT:
            return False
        shape = tuple(value)
        check = self.shapes[shape] = self.compile(shape)
        if check is not _reject:
            self.shapes[shape] = functools.partial(self._inline, shape)
        return check(value)

    def _inline(self, shape: tuple, value: dict) -> bool:
        check = self.shapes[shape] = self.compile(shape, value)
        return check(value)

    def compile(self, shape: tuple, sample: dict | None = None) -> typing.Callable[[dict], bool]:
        """The function that checks the values of a dict with exactly the keys ``shape``, in order,
        inlining the shapes ``sample``'s elements have (any dict of this shape: only a shape its
        model has compiled as valid is inlined, so its values only choose what to inline)."""
        fresh = itertools.count()
        names = [f"v{next(fresh)}" for _ in shape]
        body = self._body(shape, names, sample, 0, fresh)
        if body is None:
            return _reject
        lines = ["def check(value):"]
        if shape:  # the shape is the dict's keys in order: unpacking is the cheapest way to them
            lines.append(f"    {''.join(f'{name}, ' for name in names)}= value.values()")
        lines += [*(f"    {line}" for line in body), "    return True"]
        compiled, where = {}, f"<precheck {self.klass.__name__} {','.join(shape)}>"
        exec(compile("\n".join(lines), where, "exec"), _NAMESPACE, compiled)
        return compiled["check"]

    def _body(self, shape: tuple, names: list[str], sample: object, level: int, fresh) -> list[str] | None:
        """Statements that ``return False`` unless ``names``, the values of a dict whose keys are
        ``shape``, are valid; None when no dict of this shape is (an unknown key, a required element
        missing, two types of one choice)."""
        if self.fields is None:
            self._read_fields()
        specs = [self.fields.get(key) for key in shape]
        if None in specs or not set(self.required) <= set(shape):
            return None
        choices = [choice for _, _, choice in specs if choice is not None]
        if len(set(choices)) != len(choices) or not self.required_choices <= set(choices):
            return None
        lines = []
        for name, key, (many, element, _) in zip(names, shape, specs):
            inner = sample.get(key) if type(sample) is dict else None
            if many:
                item = f"v{next(fresh)}"
                lines += [f"if type({name}) is not list:", "    return False", f"for {item} in {name}:"]
                first = inner[0] if type(inner) is list and inner else None
                lines += [f"    {line}" for line in _value(element, item, first, level, fresh)]
            else:
                lines += _value(element, name, inner, level, fresh)
        return lines


def _value(element: Element, var: str, sample: object, level: int, fresh) -> list[str]:
    """Statements that ``return False`` unless ``var`` is a valid value of ``element``; the shape of
    ``sample`` (its value in a dict met before) inlined when ``element`` is a model that found it valid.

    An inlined shape is recognised by its size and a subscript of each of its keys (a dict of that
    size with all of them has exactly those keys, in any order), cheaper than building
    ``tuple(var)``; a dict without one of them raises KeyError and is judged by its own shape
    function, like a dict of another size."""
    if type(element) is str:
        return [f"if not {element.format(x=var)}:", "    return False"]
    own = element.expression.format(x=var)
    shape = tuple(sample) if type(sample) is dict else ()
    if not shape or level >= _INLINED_LEVELS or element.shapes.get(shape, _reject) is _reject:
        return [f"if not {own}:", "    return False"]  # no valid shape to inline: the element's own check
    names = [f"v{next(fresh)}" for _ in shape]
    body = element._body(shape, names, sample, level + 1, fresh)
    return [f"if type({var}) is not dict:", "    return False",
            f"if len({var}) == {len(shape)}:",
            "    try:", *(f"        {name} = {var}[{key!r}]" for name, key in zip(names, shape)),
            "    except KeyError:", f"        if not {own}:", "            return False",
            "    else:", *(f"        {line}" for line in body),
            f"elif not {own}:", "    return False"]


@functools.lru_cache(maxsize=None)
def _model(klass) -> _Model:
    return _Model(klass)


@functools.lru_cache(maxsize=None)
def _check_of(annotation) -> Element:
    if annotation is bool:
        return _BOOLEAN
    if typing.get_origin(annotation) is typing.Annotated:
        return _primitive(annotation)
    if isinstance(annotation, type) and issubclass(annotation, fhir_types.FhirBase):
        if issubclass(annotation, fhir_types.FhirElementOrResourceBase):
            return _NEVER  # Resource / Element polymorphism (contained): fhir.resources decides
        return _model(annotation.get_model_klass())
    return _NEVER


#: resourceType -> its model's check, or None for a name that is not a model's
_RESOURCES: dict[str, _Model | None] = {}


def _resource(resource_type: str) -> _Model | None:
    try:
        klass = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        model = None
    else:
        model = _Model(klass, klass.__resource_type__)
    if model is not None or len(_RESOURCES) < _SHAPES_KEPT:  # every real type; misspelt ones bounded
        _RESOURCES[resource_type] = model
    return model


def conforms(resource: dict) -> bool:
    """True when fhir.resources certainly accepts ``resource`` (an R4 resource as parsed JSON);
    False when it may not (then ask it: :func:`node.ingest.validate.problem`)."""
    if type(resource) is not dict:
        return False
    resource_type = resource.get("resourceType")
    if type(resource_type) is not str:
        return False
    model = _RESOURCES.get(resource_type, False)
    if model is False:
        model = _resource(resource_type)
    if model is None:
        return False
    return (model.shapes.get(tuple(resource)) or model.learn)(resource)
