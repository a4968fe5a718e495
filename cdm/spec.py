"""The query spec language: what a researcher may ask of a node, as pydantic v2 models.

A spec is a JSON/YAML document with three parts::

    cohort:                      # who: an index event, inclusion/exclusion criteria, age, sex
      index: {kind: condition, codes: ["SNOMED:443487006"], occurrence: first}
      age: {min: 18}
      sex: [F, M]
      inclusion:
        - {kind: variant, gene: MDM2, variant_type: cnv, window: {start: -90, end: 30}}
        - any:
            - {kind: image_feature, code: "RADFED:adc_mean", value: {max: 1.1}, modality: MR}
            - {kind: ctdna, detected: true}
      exclusion:
        - {kind: condition, codes: ["SNOMED:254637007"], window: {end: -1}}
    variables:                   # per-person values (see docs/analysis-rounds.md)
      adc: {kind: image_feature, code: "RADFED:adc_mean", reduce: first}
      sex: {kind: sex}
    analysis: {type: crosstab, by: [sex]}

Criteria combine with ``all`` / ``any`` / ``not``.  Windows are in days relative to the index date
(``event_day - index_day`` in ``[start, end]``; a missing bound is open).  Codes are ``SYSTEM:code``
and are checked for form here; whether a node *knows* a code is the node's business (an unknown code
matches nothing there).

Nothing in a spec is ever SQL: names of tables and columns come from allowlists in the compiler, and
every value (codes, gene symbols, HGVS strings, ROI labels, thresholds) is a bound parameter.

:func:`parse_spec` / :func:`load_spec` validate; a bad spec raises :class:`SpecError` whose message
names each offending field and why.  :func:`spec_json_schema` exports the JSON Schema.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)

from cdm.atlas.model import AtlasCohort
from cdm.errors import BadInput
from cdm.messages import RefusalCode, ReplyStatus
from cdm.vocabulary import SYSTEM_ALIASES, UnknownCode, is_system_uri, parse_reference

SPEC_VERSION = 1

#: Structural limits: a spec is a small document, never a payload.
MAX_SPEC_BYTES = 256_000
MAX_NODES = 20_000
MAX_DEPTH = 12
MAX_LIST = 200
MAX_DAYS = 36_600  # 100 years


class SpecError(BadInput, ValueError):
    """A spec that does not validate.  ``problems`` is a list of (field path, reason)."""

    reply_status = ReplyStatus.REFUSED  # a node refuses a spec it cannot read (cdm.errors.reply_of)
    reply_code = RefusalCode.BAD_SPEC

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {why}" if where else why for where, why in problems))

    def reply_message(self) -> str:
        return str(self)[:2000]


# -- small value types -----------------------------------------------------------------------------


def _check_code(value: str) -> str:
    try:
        parse_reference(value)
    except UnknownCode:
        raise ValueError("not a code of the form SYSTEM:code (e.g. LOINC:2160-0)") from None
    return value


Code = Annotated[str, StringConstraints(min_length=3, max_length=320), AfterValidator(_check_code)]


def _check_system_uri(value: str) -> str:
    if not is_system_uri(value):
        raise ValueError("not a code system URI (e.g. http://hospital.example/codes or urn:oid:1.2.3)")
    return value


def _check_alias(value: str) -> str:
    if value.upper() in SYSTEM_ALIASES:
        raise ValueError(f"{value!r} already names a standard vocabulary")
    return value


SystemAlias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,19}$"), AfterValidator(_check_alias)]
SystemUri = Annotated[str, AfterValidator(_check_system_uri)]
#: Spec fields whose strings are codes (``ALIAS:code`` in them is expanded to ``uri|code``).
CODE_FIELDS = frozenset({"code", "codes", "unit", "types", "gene"})


def spec_codes(node: Any, key: str | None = None) -> list[str]:
    """Every code a (dumped) spec names, in order, each once."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += spec_codes(v, k if k in CODE_FIELDS else key if key == "codes" else None)
    elif isinstance(node, list):
        for v in node:
            found += spec_codes(v, key)
    elif key is not None and isinstance(node, str) and (":" in node or "|" in node):
        found.append(node)
    return list(dict.fromkeys(found))


def expand_code_systems(node: Any, aliases: dict[str, str], key: str | None = None) -> Any:
    """``node`` with every ``ALIAS:code`` in a code field written as ``uri|code`` (FHIR's token form)."""
    if isinstance(node, dict):
        return {k: expand_code_systems(v, aliases, k if k in CODE_FIELDS else key if key == "codes" else None)
                for k, v in node.items()}
    if isinstance(node, list):
        return [expand_code_systems(v, aliases, key) for v in node]
    if key is not None and isinstance(node, str) and ":" in node and "|" not in node:
        alias, code = node.split(":", 1)
        if alias in aliases:
            return f"{aliases[alias]}|{code}"
    return node
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Days = Annotated[int, Field(ge=-MAX_DAYS, le=MAX_DAYS)]
Number = Annotated[float, Field(allow_inf_nan=False)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Interval(Model):
    """A model with a lower and an upper bound, either of which may be left open: ``bounds`` names the
    two fields and says what is wrong when the lower one exceeds the upper."""

    bounds: ClassVar[tuple[str, str, str]] = ("min", "max", "min must not exceed max")

    @model_validator(mode="after")
    def _ordered(self):
        low, high, problem = self.bounds
        low, high = getattr(self, low), getattr(self, high)
        if low is not None and high is not None and low > high:
            raise ValueError(problem)
        return self


class Range(_Interval):
    """A closed numeric range; either bound may be left open."""

    min: Number | None = None
    max: Number | None = None


class Window(_Interval):
    """Days relative to the index date: ``start <= event_day - index_day <= end``; open if absent."""

    bounds: ClassVar[tuple[str, str, str]] = ("start", "end", "start must not be after end")
    start: Days | None = None
    end: Days | None = None


ANY_TIME = Window()
FROM_INDEX = Window(start=0)


def _increasing(values, where: str):
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{where} must be strictly increasing")

Codes = Annotated[list[Code], Field(min_length=1, max_length=MAX_LIST)]
VariantType = Literal["snv", "indel", "cnv", "fusion", "loss"]
CtdnaField = Literal["tumour_fraction", "max_vaf", "mean_vaf", "detected"]
Reduce = Literal["first", "last", "min", "max", "mean", "count"]
Sex = Literal["M", "F", "O", "U"]
#: per-window statistics of a wearable stream (``signal_window``)
SignalStat = Literal["mean", "sd", "min", "max"]


# -- events: what criteria, index events, variables and survival ends are made of ------------------


class _Event(Model):
    window: Window = ANY_TIME
    min_count: Annotated[int, Field(ge=1, le=1000)] = 1


class _CodedEvent(_Event):
    """Events of a domain that are only their codes (and, with ``descendants``, the codes below
    them in the vocabulary's hierarchy)."""

    codes: Codes
    descendants: bool = True


class ConditionCriterion(_CodedEvent):
    kind: Literal["condition"] = "condition"


class ProcedureCriterion(_CodedEvent):
    kind: Literal["procedure"] = "procedure"


class DrugCriterion(_CodedEvent):
    kind: Literal["drug"] = "drug"


class MeasurementCriterion(_Event):
    kind: Literal["measurement"] = "measurement"
    code: Code
    value: Range | None = None
    unit: Code | None = None


class VariantCriterion(_Event):
    kind: Literal["variant"] = "variant"
    gene: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None
    variant_type: VariantType | None = None
    hgvs: Text | None = None
    vaf: Range | None = None
    copy_number: Range | None = None
    ctdna: bool | None = None
    origin: Literal["somatic", "germline"] | None = None

    @model_validator(mode="after")
    def _something(self):
        if self.gene is None and self.variant_type is None and self.hgvs is None:
            raise ValueError("a variant criterion needs gene, variant_type or hgvs")
        return self


class ImageFeatureCriterion(_Event):
    kind: Literal["image_feature"] = "image_feature"
    code: Code
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,8}$")] | None = None
    roi: Label | None = None
    value: Range | None = None


class CtdnaCriterion(_Event):
    kind: Literal["ctdna"] = "ctdna"
    detected: bool | None = None
    field: Literal["tumour_fraction", "max_vaf", "mean_vaf"] | None = None
    value: Range | None = None

    @model_validator(mode="after")
    def _field_for_value(self):
        if self.value is not None and self.field is None:
            raise ValueError("a value range needs field: tumour_fraction, max_vaf or mean_vaf")
        return self


class SignalCriterion(_Event):
    """Windows of a wearable stream (``signal_window``: summaries of second-level samples) whose
    ``stat`` lies in ``value``; ``min_count`` counts such windows, ``window`` is on their start day."""

    kind: Literal["signal"] = "signal"
    code: Code
    stat: SignalStat = "mean"
    value: Range | None = None


class EpisodeCriterion(_Event):
    kind: Literal["episode"] = "episode"
    codes: Codes


class DeathCriterion(_Event):
    kind: Literal["death"] = "death"


class NoteCriterion(_Event):
    """Clinical notes (``note``: radiology and pathology reports, discharge letters...) by document
    type: ``codes`` match the note's class (FHIR ``DocumentReference.type`` / the report's ``code``,
    e.g. ``LOINC:18748-4`` "Diagnostic imaging study"); without codes any note matches.  The text
    itself is never searched by a spec."""

    kind: Literal["note"] = "note"
    codes: Codes | None = None
    descendants: bool = True


class VisitCriterion(_Event):
    """Visits (``visit_occurrence``: a FHIR Encounter), by visit concept and/or encounter type.

    ``codes`` are visit concepts matched on ``visit_concept_id`` (``Visit:IP`` inpatient, ``Visit:OP``
    outpatient, ``Visit:ER`` emergency: what the Encounter's class maps to); ``types`` are the
    codes of the encounter type (FHIR ``Encounter.type``, e.g. ``SNOMED:185347001``), matched on
    ``visit_source_concept_id``; ``length_days`` bounds ``end - start`` in days.  Without any of them,
    any visit matches.  ``window`` and ``min_count`` apply to the visit's start day."""

    kind: Literal["visit"] = "visit"
    codes: Codes | None = None
    types: Codes | None = None
    descendants: bool = True
    length_days: Range | None = None


class AgeCriterion(_Interval):
    """Age at the index date, whole years."""

    kind: Literal["age"] = "age"
    min: Annotated[int, Field(ge=0, le=150)] | None = None
    max: Annotated[int, Field(ge=0, le=150)] | None = None


class SexCriterion(Model):
    kind: Literal["sex"] = "sex"
    values: Annotated[list[Sex], Field(min_length=1, max_length=4)]


class GroupCriterion(Model):
    """Persons whose ``groups`` variable (defined under ``variables``) is in one of ``values``,
    evaluated at the index date like the variable itself; persons without a value match no group."""

    kind: Literal["group"] = "group"
    variable: Name
    values: Annotated[list[Label], Field(min_length=1, max_length=21)]


class AllOf(Model):
    kind: Literal["all"] = "all"
    all: Annotated[list["Criterion"], Field(max_length=MAX_LIST)]


class AnyOf(Model):
    kind: Literal["any"] = "any"
    any: Annotated[list["Criterion"], Field(max_length=MAX_LIST)]


class Not(Model):
    kind: Literal["not"] = "not"
    not_: "Criterion" = Field(alias="not")


#: the events a criterion can ask for, in the order the error message lists them
EVENT_CRITERIA = (ConditionCriterion, ProcedureCriterion, DrugCriterion, MeasurementCriterion, VariantCriterion,
                  ImageFeatureCriterion, CtdnaCriterion, SignalCriterion, EpisodeCriterion, DeathCriterion,
                  VisitCriterion, NoteCriterion)
#: the events that can be a cohort's index event (one with a date of its own per occurrence)
INDEX_EVENTS = (ConditionCriterion, ProcedureCriterion, DrugCriterion, MeasurementCriterion, VariantCriterion,
                ImageFeatureCriterion, CtdnaCriterion, EpisodeCriterion, VisitCriterion, NoteCriterion)


def _kind(model) -> str:
    return model.model_fields["kind"].default


EVENT_KINDS = tuple(map(_kind, EVENT_CRITERIA))


def _tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "kind" in value:
            return value["kind"] if isinstance(value["kind"], str) else None
        for logical in ("all", "any", "not"):
            if logical in value:
                return logical
        return None
    return getattr(value, "kind", None)


def _by_kind(models: tuple, error_type: str, what: str):
    """The union of ``models``, told apart by their ``kind`` (:func:`_tag`: a logical criterion by its
    key); another kind fails with ``what`` and the kinds there are."""
    kinds = [_kind(m) for m in models]
    return Annotated[Union[tuple(Annotated[m, Tag(k)] for m, k in zip(models, kinds))],
                     Discriminator(_tag, custom_error_type=error_type,
                                   custom_error_message=f"{what} needs kind: " + "|".join(kinds))]


Criterion = _by_kind(EVENT_CRITERIA + (AgeCriterion, SexCriterion, GroupCriterion, AllOf, AnyOf, Not),
                     "criterion_kind", "a criterion")
for _m in (AllOf, AnyOf, Not):
    _m.model_rebuild()


# -- cohort ---------------------------------------------------------------------------------------


class ObservationStart(Model):
    """Index at the start of the person's first observation period."""

    kind: Literal["observation_start"] = "observation_start"


IndexEvent = _by_kind(INDEX_EVENTS + (ObservationStart,), "index_kind", "the index event")


class Cohort(Model):
    """Persons with the index event (its first or last occurrence gives the index date) who meet
    every inclusion criterion, none of the exclusion criteria, and the age and sex limits."""

    index: IndexEvent = ObservationStart()
    occurrence: Literal["first", "last"] = "first"
    age: AgeCriterion | None = None
    sex: Annotated[list[Sex], Field(min_length=1, max_length=4)] | None = None
    inclusion: Annotated[list[Criterion], Field(max_length=MAX_LIST)] = []
    exclusion: Annotated[list[Criterion], Field(max_length=MAX_LIST)] = []

    @model_validator(mode="after")
    def _index_without_window(self):
        if not isinstance(self.index, ObservationStart):
            if self.index.window != ANY_TIME or self.index.min_count != 1:
                raise ValueError("the index event cannot have a window or min_count (it defines day 0)")
        return self


# -- variables ------------------------------------------------------------------------------------


class _Var(Model):
    time_varying: bool = False

    categorical: ClassVar[bool] = False


class _EventVar(_Var):
    window: Window = FROM_INDEX
    reduce: Reduce = "first"


class ImageFeatureVar(_EventVar):
    kind: Literal["image_feature"] = "image_feature"
    code: Code
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,8}$")] | None = None
    roi: Label | None = None


class MeasurementVar(_EventVar):
    kind: Literal["measurement"] = "measurement"
    code: Code
    unit: Code | None = None


class CtdnaVar(_EventVar):
    kind: Literal["ctdna"] = "ctdna"
    field: CtdnaField = "tumour_fraction"


class SignalVar(_EventVar):
    """A wearable stream's window summaries in ``window``, reduced over the windows.

    ``stat: mean`` with ``reduce: mean`` is the mean of every sample in those windows, each window
    weighted by its sample count: ``sum(n_w * mean_w) / sum(n_w)``.  Other combinations reduce the
    per-window statistic as it is (``reduce: max`` of ``stat: max`` is the largest sample;
    ``reduce: count`` counts windows).  Time-varying: each window's statistic is in force from its
    start day."""

    kind: Literal["signal"] = "signal"
    code: Code
    stat: SignalStat = "mean"
    reduce: Reduce = "mean"


class VariantVar(_Var):
    """1 if the person has a matching variant in the window, else 0 (``field: presence``), or a
    reduced VAF / copy number."""

    kind: Literal["variant"] = "variant"
    gene: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None
    variant_type: VariantType | None = None
    hgvs: Text | None = None
    ctdna: bool | None = None
    field: Literal["presence", "vaf", "copy_number"] = "presence"
    reduce: Reduce = "first"
    window: Window = ANY_TIME

    @model_validator(mode="after")
    def _something(self):
        if self.gene is None and self.variant_type is None and self.hgvs is None:
            raise ValueError("a variant variable needs gene, variant_type or hgvs")
        if self.time_varying:
            raise ValueError("variant variables cannot be time-varying")
        return self


class ConditionVar(_Var):
    """``codes`` as a list: 1 if any is recorded in the window, else 0.  As a mapping
    ``{label: code}``: the label of the first-recorded of them (categorical)."""

    kind: Literal["condition"] = "condition"
    codes: Union[
        Annotated[dict[Label, Code], Field(min_length=1, max_length=MAX_LIST)],
        Codes,
    ]
    descendants: bool = True
    window: Window = ANY_TIME

    @property
    def categorical(self) -> bool:  # type: ignore[override]
        return isinstance(self.codes, dict)

    @model_validator(mode="after")
    def _static(self):
        if self.time_varying:
            raise ValueError("condition variables cannot be time-varying")
        return self


class EpisodeVar(_Var):
    kind: Literal["episode"] = "episode"
    codes: Codes
    window: Window = ANY_TIME


class AgeVar(_Var):
    kind: Literal["age"] = "age"


class _CategoricalVar(_Var):
    """A variable whose values are categories, never numbers."""

    categorical: ClassVar[bool] = True


class SexVar(_CategoricalVar):
    kind: Literal["sex"] = "sex"


class SiteVar(_CategoricalVar):
    kind: Literal["site"] = "site"


NumericVariable = Annotated[
    Union[ImageFeatureVar, MeasurementVar, CtdnaVar, SignalVar, VariantVar, ConditionVar, EpisodeVar, AgeVar],
    Field(discriminator="kind"),
]


class GroupsVar(_Var):
    """A categorical variable made from a numeric one (``of``, any numeric variable written inline):
    ``cuts`` split its value into ``len(cuts) + 1`` groups, each closed below and open above —
    group ``i`` holds ``cuts[i-1] <= value < cuts[i]`` — named by ``labels`` (default ``<c1``,
    ``c1-c2``... ``>=ck``).  One cut is a threshold: ``{of: {kind: measurement, code: ...}, cuts:
    [0.5], labels: ["0", "1"]}`` turns a 0/1 measurement into two groups.  Persons without a value
    are in no group.  The groups come from the spec, never from the data, so a crosstab, KM or
    log-rank by them releases the same shape under the same disclosure rules as any other category."""

    kind: Literal["groups"] = "groups"
    of: NumericVariable
    cuts: Annotated[list[Number], Field(min_length=1, max_length=20)]
    labels: Annotated[list[Label], Field(min_length=2, max_length=21)] | None = None
    categorical: ClassVar[bool] = True

    @model_validator(mode="after")
    def _groups(self):
        _increasing(self.cuts, "cuts")
        if self.labels is not None:
            if len(self.labels) != len(self.cuts) + 1:
                raise ValueError(f"labels needs {len(self.cuts) + 1} names for {len(self.cuts)} cuts")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be distinct")
        if self.time_varying or self.of.time_varying:
            raise ValueError("groups variables cannot be time-varying")
        if self.of.categorical:
            raise ValueError("of: groups are cut from a numeric variable")
        return self

    @property
    def group_labels(self) -> list[str]:
        if self.labels is not None:
            return list(self.labels)
        cuts = [f"{c:g}" for c in self.cuts]
        return [f"<{cuts[0]}", *(f"{a}-{b}" for a, b in zip(cuts, cuts[1:])), f">={cuts[-1]}"]

    def bounds(self, label: str) -> tuple[float | None, float | None]:
        """``[low, high)`` of a group (``None``: open)."""
        i = self.group_labels.index(label)
        return (self.cuts[i - 1] if i > 0 else None), (self.cuts[i] if i < len(self.cuts) else None)


Variable = Annotated[
    Union[ImageFeatureVar, MeasurementVar, CtdnaVar, SignalVar, VariantVar, ConditionVar, EpisodeVar, AgeVar, SexVar,
          SiteVar, GroupsVar],
    Field(discriminator="kind"),
]
TIME_VARYING_KINDS = ("image_feature", "measurement", "ctdna", "signal")


# -- survival time --------------------------------------------------------------------------------


class DeathEnd(Model):
    """The survival event is death (OMOP ``death``)."""

    kind: Literal["death"] = "death"


class EpisodeEnd(Model):
    """The survival event is the first episode of ``code`` after the index date (e.g. progression,
    OMOP Oncology ``episode``)."""

    kind: Literal["episode"] = "episode"
    code: Code


class ConditionEnd(Model):
    """The survival event is the first condition ``code`` (or, with ``descendants``, one below it)
    recorded after the index date."""

    kind: Literal["condition"] = "condition"
    code: Code
    descendants: bool = True


class SurvivalTime(Model):
    """Days from the index date to the first event after it, else to the censoring date."""

    start: Literal["index"] = "index"
    event: Annotated[Union[DeathEnd, EpisodeEnd, ConditionEnd], Field(discriminator="kind")]
    censor: Literal["observation_end"] = "observation_end"
    max_days: Annotated[int, Field(ge=1, le=MAX_DAYS)] | None = None


# -- analyses -------------------------------------------------------------------------------------

Vars = Annotated[list[Name], Field(min_length=1, max_length=50)]
Beta = Annotated[list[Number], Field(max_length=101)]
Edges = Annotated[list[Number], Field(min_length=2, max_length=1001)]


class _Analysis(Model):
    """What every analysis model shares: how it checks the variables it names against the spec's.

    ``numeric``: every variable it names must be numeric (:class:`_NumericAnalysis`)."""

    numeric: ClassVar[bool] = False

    def variable_problems(self, variables: dict, categorical: set) -> list[str]:
        """What is wrong with the variables this analysis names (they exist: checked before)."""
        if not self.numeric:
            return []
        return [f"analysis.{where}: {name!r} is categorical; this analysis needs a numeric variable"
                for where, name in analysis_variables(self) if name in categorical]


class _NumericAnalysis(_Analysis):
    """An analysis every variable of which must be numeric (models, moments, quantiles, bins)."""

    numeric: ClassVar[bool] = True


def _group_problems(analysis, variables: dict, categorical: set) -> list[str]:
    """A KM ``group`` must be categorical or 0/1."""
    if analysis.group and analysis.group not in categorical and not _binary(variables[analysis.group]):
        return [f"analysis.group: {analysis.group!r} must be categorical or 0/1 (cut a numeric "
                "variable into groups: {kind: groups, of: {...}, cuts: [...]})"]
    return []


def _time_varying_problems(analysis, variables: dict, categorical: set) -> list[str]:
    """Numeric covariates, and time-varying ones only when the Cox model says ``time_varying``."""
    problems = _Analysis.variable_problems(analysis, variables, categorical)
    tv = [n for n in analysis.covariates if variables[n].time_varying]
    if tv and not analysis.time_varying:
        problems.append(f"analysis.time_varying: covariates {tv} are time-varying; set time_varying: true")
    return problems


class CountAnalysis(_Analysis):
    type: Literal["count"] = "count"


class CrosstabAnalysis(_Analysis):
    type: Literal["crosstab"] = "crosstab"
    by: Annotated[list[Name], Field(min_length=1, max_length=6)]
    bins: dict[Name, Edges] = {}

    @model_validator(mode="after")
    def _bins(self):
        for name, edges in self.bins.items():
            _increasing(edges, f"bins.{name}")
        return self

    def variable_problems(self, variables: dict, categorical: set) -> list[str]:
        problems = []
        for name in self.bins:
            if name not in self.by:
                problems.append(f"analysis.bins.{name}: not one of by")
            elif name in categorical:
                problems.append(f"analysis.bins.{name}: {name!r} is categorical, bins are for numeric variables")
        for i, name in enumerate(self.by):
            if name not in categorical and name not in self.bins and not _binary(variables[name]):
                problems.append(f"analysis.by[{i}]: numeric variable {name!r} needs bins")
        return problems


class _OverVariables(_NumericAnalysis):
    """Per-variable sums over a list of numeric variables (a summary's moments, a correlation's
    cross-products)."""

    variables: Vars


class SummaryAnalysis(_OverVariables):
    type: Literal["summary"] = "summary"


class QuantileRound(_NumericAnalysis):
    type: Literal["quantile_round"] = "quantile_round"
    variable: Name
    thresholds: Annotated[list[Number], Field(min_length=1, max_length=200)]


class HistogramAnalysis(_NumericAnalysis):
    type: Literal["histogram"] = "histogram"
    variable: Name
    edges: Edges

    @model_validator(mode="after")
    def _edges(self):
        _increasing(self.edges, "edges")
        return self


class CrossprodAnalysis(_OverVariables):
    type: Literal["crossprod"] = "crossprod"


class _KaplanMeier(_Analysis):
    """Survival by ``group`` on a shared ``bin_days`` time grid (the analysis, and its site round)."""

    variable_problems = _group_problems
    time: SurvivalTime
    group: Name | None = None
    bin_days: Annotated[int, Field(ge=1, le=3660)] = 30


class KMRound(_KaplanMeier):
    type: Literal["km_round"] = "km_round"


class _Cox(_NumericAnalysis):
    """A Cox model's survival time and covariates (the analysis, and its site round)."""

    variable_problems = _time_varying_problems
    time: SurvivalTime
    covariates: Vars
    time_varying: bool = False


class CoxRound(_Cox):
    type: Literal["cox_round"] = "cox_round"
    beta: Beta
    ties: Literal["breslow", "efron"] = "breslow"
    mode: Literal["stratified", "pooled"] = "stratified"

    @model_validator(mode="after")
    def _shape(self):
        if len(self.beta) != len(self.covariates):
            raise ValueError(f"beta has {len(self.beta)} values for {len(self.covariates)} covariates")
        return self


class GLMRound(_NumericAnalysis):
    type: Literal["glm_round"] = "glm_round"
    family: Literal["binomial", "gaussian"]
    outcome: Name
    covariates: Vars
    beta: Beta = []
    weights: Name | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.family == "binomial" and len(self.beta) != len(self.covariates) + 1:
            raise ValueError(f"beta needs {len(self.covariates) + 1} values (intercept first), got {len(self.beta)}")
        return self


# -- node rounds: concordance and spatial biopsy --------------------------------------------------

Probability = Annotated[float, Field(gt=0, lt=1)]


class ConcordanceRound(_Analysis):
    """Agreement of two progression calls per cohort member, and where Bayes' rule puts them.

    ``imaging`` and ``ctdna`` name 0/1 variables: progression by imaging and by ctDNA at the
    assessment, e.g. ``{kind: episode, codes: ["RADFED:progression"], window: {start: 60, end: 120}}``
    and ``{kind: ctdna, field: detected, reduce: last, window: {start: 60, end: 120}}``.  Each call's
    sensitivity/specificity and the ``prior`` probability of progression give every member a
    posterior (conditionally independent tests); ``band`` = (lo, hi) splits posteriors into likely
    response (<= lo), indeterminate, likely progression (>= hi).
    """

    type: Literal["concordance"] = "concordance"
    imaging: Name
    ctdna: Name
    imaging_sens: Probability
    imaging_spec: Probability
    ctdna_sens: Probability
    ctdna_spec: Probability
    prior: Probability
    band: tuple[Probability, Probability] = (0.2, 0.8)

    @model_validator(mode="after")
    def _band(self):
        if self.band[0] >= self.band[1]:
            raise ValueError("band must be [lo, hi] with lo < hi")
        return self

    def variable_problems(self, variables: dict, categorical: set) -> list[str]:
        return [f"analysis.{where}: {getattr(self, where)!r} must be a 0/1 variable "
                "(episode, condition list, variant presence or ctdna detected)"
                for where in ("imaging", "ctdna") if not _binary(variables[getattr(self, where)])]


class HabitatRound(_Analysis):
    """One Newton round of a weighted logistic model over the cohort's spatially located biopsies:
    outcome = the biopsy's specimen carries a variant of ``gene`` / ``variant_type``; design =
    intercept + one 0/1 column per habitat in ``habitats[1:]`` (``habitats[0]`` is the reference);
    weight = P(the biopsy lies in its labelled habitat) from its distance to the habitat border and
    its registration error.  Biopsies labelled with a habitat not in ``habitats`` are left out."""

    type: Literal["habitat_round"] = "habitat_round"
    gene: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None
    variant_type: VariantType | None = None
    habitats: Annotated[list[Label], Field(min_length=2, max_length=20)]
    beta: Beta

    @model_validator(mode="after")
    def _shape(self):
        if self.gene is None and self.variant_type is None:
            raise ValueError("habitat_round needs gene or variant_type (the biopsy outcome)")
        if self.gene is not None and ":" in self.gene:
            _check_code(self.gene)  # a gene given as a code (HGNC:...) must be one
        if len(set(self.habitats)) != len(self.habitats):
            raise ValueError("habitats must be distinct")
        if len(self.beta) != len(self.habitats):
            raise ValueError(f"beta needs {len(self.habitats)} values (intercept, then habitats[1:]), got {len(self.beta)}")
        return self


# -- multi-round analyses (run by the coordinator) ---------------------------------------------------
# A researcher asks for one of these; the coordinator (coordinator/stats/) runs it as rounds of the
# node analyses above and pools them.  Nodes refuse them (NOT_ALLOWED): they never see one.

MaxIter = Annotated[int, Field(ge=1, le=200)]
Tolerance = Annotated[float, Field(gt=0, le=1e-3)]


class KMAnalysis(_KaplanMeier):
    """Kaplan-Meier curves (by ``group``) and the log-rank test on a shared ``bin_days`` time grid."""

    type: Literal["km"] = "km"


class CoxAnalysis(_Cox):
    """Cox proportional hazards by Newton-Raphson: ``stratified`` (each site a stratum, sites share
    score and information) or ``pooled`` (one baseline; sites share per-time risk-set sums)."""

    type: Literal["cox"] = "cox"
    ties: Literal["breslow", "efron"] = "efron"
    mode: Literal["stratified", "pooled"] = "pooled"
    max_iter: MaxIter = 50
    tol: Tolerance = 1e-9


class GLMAnalysis(_NumericAnalysis):
    """Logistic (Newton rounds) or linear (normal equations, one round) regression, optionally weighted."""

    type: Literal["glm"] = "glm"
    family: Literal["binomial", "gaussian"]
    outcome: Name
    covariates: Vars
    weights: Name | None = None
    max_iter: MaxIter = 50
    tol: Tolerance = 1e-9


class QuantileAnalysis(_NumericAnalysis):
    """Exact pooled quantiles (numpy's default linear interpolation) by bisection on counts."""

    type: Literal["quantile"] = "quantile"
    variable: Name
    probs: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=1, max_length=20)] = [0.5]
    max_rounds: Annotated[int, Field(ge=1, le=100)] = 40


class CorrelationAnalysis(_NumericAnalysis):
    """Pooled means, covariance and Pearson correlation matrix from one ``crossprod`` round."""

    type: Literal["correlation"] = "correlation"
    variables: Annotated[list[Name], Field(min_length=2, max_length=50)]


class HabitatAnalysis(_Analysis):
    """Habitat-genomics association: weighted logistic regression over ``habitat_round`` rounds."""

    type: Literal["habitat"] = "habitat"
    gene: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None
    variant_type: VariantType | None = None
    habitats: Annotated[list[Label], Field(min_length=2, max_length=20)]
    max_iter: MaxIter = 50
    tol: Tolerance = 1e-9

    @model_validator(mode="after")
    def _shape(self):
        if self.gene is None and self.variant_type is None:
            raise ValueError("habitat needs gene or variant_type (the biopsy outcome)")
        if len(set(self.habitats)) != len(self.habitats):
            raise ValueError("habitats must be distinct")
        return self


Analysis = Annotated[
    Union[CountAnalysis, CrosstabAnalysis, SummaryAnalysis, QuantileRound, HistogramAnalysis, CrossprodAnalysis,
          KMRound, CoxRound, GLMRound, ConcordanceRound, HabitatRound,
          KMAnalysis, CoxAnalysis, GLMAnalysis, QuantileAnalysis, CorrelationAnalysis, HabitatAnalysis],
    Field(discriminator="type"),
]
#: every analysis type of the spec language (what each does and where: :mod:`cdm.analyses`)
ANALYSIS_TYPES = tuple(model.model_fields["type"].default for model in get_args(get_args(Analysis)[0]))


def analysis_variables(analysis) -> list[tuple[str, str]]:
    """(field path, variable name) of every variable an analysis uses, in order."""
    used: list[tuple[str, str]] = []
    for field in ("by", "variables", "covariates"):
        for i, name in enumerate(getattr(analysis, field, None) or []):
            used.append((f"{field}[{i}]", name))
    for field in ("variable", "outcome", "weights", "group", "imaging", "ctdna"):
        name = getattr(analysis, field, None)
        if name is not None:
            used.append((field, name))
    return used


def _cohort_tag(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "atlas" if kind == "atlas" else "radfed"


#: a radfed cohort, or an ATLAS definition translated by cdm.atlas (``kind: atlas``)
AnyCohort = Annotated[Union[Annotated[Cohort, Tag("radfed")], Annotated[AtlasCohort, Tag("atlas")]],
                      Discriminator(_cohort_tag)]


class Spec(Model):
    """A complete query: cohort, variables and one analysis."""

    version: Literal[1] = SPEC_VERSION
    cohort: AnyCohort = Cohort()
    variables: Annotated[dict[Name, Variable], Field(max_length=60)] = {}
    analysis: Analysis = CountAnalysis()
    #: ``warn``: a code a node does not know matches nothing there, with an ``UNKNOWN_CODE`` warning
    #: (a node whose index codes are all unknown refuses anyway); ``refuse``: a node that cannot
    #: resolve *every* code of the spec refuses with ``UNKNOWN_CODE`` rather than answer a different
    #: question (an unknown exclusion code excludes nobody, an unknown variable code is all-missing)
    unknown_codes: Literal["warn", "refuse"] = "warn"
    #: readable names for local code systems: ``{HOSPLAB: "http://hospital.example/codes"}`` lets the
    #: spec write ``HOSPLAB:K-12`` for ``http://hospital.example/codes|K-12`` (the coordinator adds the
    #: network's own ``[code_systems]``); codes are validated and hashed in their expanded form
    code_systems: Annotated[dict[SystemAlias, SystemUri], Field(max_length=50)] = {}

    @model_validator(mode="before")
    @classmethod
    def _expand_aliases(cls, data):
        if isinstance(data, dict) and isinstance(data.get("code_systems"), dict) and data["code_systems"]:
            aliases = {k: v for k, v in data["code_systems"].items() if isinstance(k, str) and isinstance(v, str)}
            data = {k: (v if k in ("code_systems", "version", "unknown_codes") else expand_code_systems(v, aliases))
                    for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _references(self):
        problems = []
        analysis = self.analysis
        for where, name in analysis_variables(analysis):
            if name not in self.variables:
                problems.append(f"analysis.{where}: unknown variable {name!r} (define it under variables)")
        if problems:
            raise ValueError("; ".join(problems))
        categorical = {n for n, v in self.variables.items() if v.categorical}
        problems += analysis.variable_problems(self.variables, categorical)
        for where, criterion in _criteria(self.cohort):
            if criterion.kind != "group":
                continue
            var = self.variables.get(criterion.variable)
            if not isinstance(var, GroupsVar):
                problems.append(f"{where}.variable: {criterion.variable!r} is not a groups variable under variables")
            elif set(criterion.values) - set(var.group_labels):
                problems.append(f"{where}.values: {sorted(set(criterion.values) - set(var.group_labels))} are not "
                                f"groups of {criterion.variable!r} ({', '.join(var.group_labels)})")
        for name, var in self.variables.items():
            if var.time_varying and var.kind not in TIME_VARYING_KINDS:
                problems.append(f"variables.{name}.time_varying: only {', '.join(TIME_VARYING_KINDS)} can vary in time")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _criteria(cohort: Cohort):
    """(field path, criterion) of every criterion of a cohort, nested ones included."""
    stack = [(f"cohort.{part}[{i}]", c) for part in ("inclusion", "exclusion")
             for i, c in enumerate(getattr(cohort, part))]
    while stack:
        where, c = stack.pop()
        yield where, c
        if c.kind in ("all", "any"):
            stack += [(f"{where}.{c.kind}[{i}]", x) for i, x in enumerate(getattr(c, c.kind))]
        elif c.kind == "not":
            stack.append((f"{where}.not", c.not_))


def _binary(var) -> bool:
    return (
        (var.kind == "variant" and var.field == "presence")
        or (var.kind == "condition" and not var.categorical)
        or var.kind == "episode"
        or (var.kind == "ctdna" and var.field == "detected")
    )


# -- loading, hashing, schema ---------------------------------------------------------------------


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _check_shape(data: Any) -> None:
    """Refuse documents too deep or too large before pydantic walks them (YAML aliases can multiply)."""
    budget = [MAX_NODES]

    def walk(node: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError([("", f"spec too large (more than {MAX_NODES} values)")])
        if depth > 3 * MAX_DEPTH:
            raise SpecError([("", f"spec nested too deeply (more than {MAX_DEPTH} levels of criteria)")])
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise SpecError([("", "every key must be a string")])
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)
        elif not (node is None or isinstance(node, (str, int, float, bool))):
            raise SpecError([("", f"unsupported value of type {type(node).__name__}")])

    walk(data, 0)


def parse_spec(data: Any) -> Spec:
    """Validate a spec given as a dict (or a :class:`Spec`); :class:`SpecError` names every problem."""
    if isinstance(data, Spec):
        return data
    if not isinstance(data, dict):
        raise SpecError([("", "a spec must be a mapping with cohort, variables and analysis")])
    _check_shape(data)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            message = err["msg"].removeprefix("Value error, ")
            loc = err["loc"]
            if loc[:2] in (("cohort", "radfed"), ("cohort", "atlas")):  # the union's tag is no field
                loc = ("cohort",) + tuple(loc[2:])
            problems.append((_loc(loc), message))
        raise SpecError(problems) from None
    except RecursionError:
        raise SpecError([("", "spec nested too deeply")]) from None


def loads_spec(text: str | bytes) -> Spec:
    """Validate a spec from JSON or YAML text."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError([("", "spec is not UTF-8 text")]) from None
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([("", f"spec larger than {MAX_SPEC_BYTES} bytes")])
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError([("", f"not valid JSON or YAML: {first}")]) from None
    except RecursionError:
        raise SpecError([("", "spec nested too deeply")]) from None
    return parse_spec(data)


def load_spec(path: str | Path) -> Spec:
    """Validate a spec file (``.json``, ``.yaml``/``.yml``)."""
    return loads_spec(Path(path).read_bytes())


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _canonical_dump(spec: Spec) -> dict:
    """The spec as hashed.  Options added after hashes were first stored (approvals, audit entries)
    are left out while they have their default value, so an existing spec keeps its hash."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    if dumped.get("unknown_codes") == "warn":
        del dumped["unknown_codes"]
    if not dumped.get("code_systems"):
        dumped.pop("code_systems", None)
    return dumped


def spec_hash(spec: Spec) -> str:
    """SHA-256 of the validated spec in canonical form (equivalent documents hash alike)."""
    return _digest(_canonical_dump(spec))


def cohort_hash(spec: Spec) -> str:
    return _digest(spec.cohort.model_dump(mode="json", by_alias=True))


def approval_key(spec: Spec) -> str:
    """What a site approves: the spec without per-round numbers (``beta``), so an approved model
    keeps running through its Newton iterations."""
    dumped = _canonical_dump(spec)
    dumped["analysis"].pop("beta", None)
    return _digest(dumped)


def spec_json_schema() -> dict:
    """The JSON Schema of a spec (draft 2020-12, as pydantic emits it)."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "radfed query spec"
    return schema


def is_finite(x: float) -> bool:
    return math.isfinite(x)
