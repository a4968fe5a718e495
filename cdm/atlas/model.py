"""The translated ATLAS cohort: a Circe cohort expression in radfed's terms (pydantic models).

Field by field this is Circe's own logic (OHDSI circe-be, "Cohort Expression" in the Book of
OHDSI, ch. 10), restricted to what radfed compiles exactly; the translator
(:mod:`cdm.atlas.translate`) refuses everything else.  Concept sets name concepts by
``(vocabulary, concept_code)``, never by concept id: ids differ between sites, codes do not.
Nothing here is SQL; the compiler (:mod:`cdm.atlas.cohort`) binds every value as a parameter.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_ITEMS = 5_000
Days = Annotated[int, Field(ge=-36_600, le=36_600)]
Text = Annotated[str, StringConstraints(max_length=400)]
#: Circe's comparison operators (``bt``/``!bt`` use ``extent`` as the upper bound)
Op = Literal["lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"]
Limit = Literal["first", "last", "all"]
#: the OMOP domains a criterion reads (one table each, cdm/atlas/criteria.py)
Domain = Literal["condition", "procedure", "drug", "measurement", "observation", "visit", "observation_period",
                 "death", "drug_era", "condition_era", "device", "specimen", "visit_detail", "dose_era"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumberFilter(Model):
    op: Op
    value: float
    extent: Optional[float] = None


class DateFilter(Model):
    op: Op
    value: dt.date
    extent: Optional[dt.date] = None


class Concept(Model):
    """One concept by vocabulary and code (a value concept, a unit, a gender)."""

    vocabulary: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    concept_code: Annotated[str, StringConstraints(min_length=1, max_length=50)]

    @property
    def reference(self) -> str:
        return f"{self.vocabulary}:{self.concept_code}"


class ConceptItem(Concept):
    descendants: bool = False
    excluded: bool = False
    mapped: bool = False


class ConceptSet(Model):
    id: int
    name: Text = ""
    items: Annotated[list[ConceptItem], Field(max_length=MAX_ITEMS)]


Concepts = Annotated[list[Concept], Field(min_length=1, max_length=200)]


class Events(Model):
    """A Circe criterion: events of one domain with its attribute filters.  ``first``: only the
    person's first event of the concept set (before the other filters, as Circe orders them)."""

    domain: Domain
    codeset: Optional[int] = None
    source_codeset: Optional[int] = None
    first: bool = False
    start_date: Optional[DateFilter] = None
    end_date: Optional[DateFilter] = None
    age: Optional[NumberFilter] = None
    gender: Optional[Concepts] = None
    value: Optional[NumberFilter] = None
    value_concepts: Optional[Concepts] = None
    unit: Optional[Concepts] = None
    range_low: Optional[NumberFilter] = None
    range_high: Optional[NumberFilter] = None
    range_low_ratio: Optional[NumberFilter] = None
    range_high_ratio: Optional[NumberFilter] = None
    era_length: Optional[NumberFilter] = None
    occurrence_count: Optional[NumberFilter] = None
    period_length: Optional[NumberFilter] = None
    visit_concepts: Optional[Concepts] = None  # the concept of the visit the event is recorded in
    provider_specialty: Optional[Concepts] = None
    correlated: Optional["Group"] = None


class Bound(Model):
    """``days`` before (coeff -1) or after (+1) the anchor; ``None``: all days (to the observation
    period's edge while the criterion is restricted to it)."""

    days: Optional[Annotated[int, Field(ge=0, le=36_600)]] = None
    coeff: Literal[-1, 1] = -1


class Window(Model):
    start: Bound
    end: Bound
    index_end: bool = False
    event_end: bool = False


class Occurrence(Model):
    type: Literal["exactly", "at_most", "at_least"]
    count: Annotated[int, Field(ge=0, le=100_000)]
    distinct: bool = False
    column: Literal["concept", "start_date", "visit"] = "concept"


class Correlated(Model):
    events: Events
    start_window: Window
    end_window: Optional[Window] = None
    restrict_visit: bool = False
    ignore_observation_period: bool = False
    occurrence: Occurrence


class Demographic(Model):
    age: Optional[NumberFilter] = None
    gender: Optional[Concepts] = None
    race: Optional[Concepts] = None
    ethnicity: Optional[Concepts] = None
    start_date: Optional[DateFilter] = None
    end_date: Optional[DateFilter] = None


class Group(Model):
    type: Literal["all", "any", "at_least", "at_most"] = "all"
    count: Optional[int] = None
    criteria: list[Correlated] = []
    demographics: list[Demographic] = []
    groups: list["Group"] = []


class InclusionRule(Model):
    name: Text = ""
    expression: Group


class DateOffsetEnd(Model):
    kind: Literal["date_offset"] = "date_offset"
    field: Literal["start", "end"]
    offset: Annotated[int, Field(ge=-10_000_000, le=10_000_000)]


class DrugEraEnd(Model):
    """Continuous drug exposure (Circe ``CustomEra``): the era of the concept set's exposures, gaps
    of up to ``gap_days`` bridged, that contains the event, ending ``offset`` days after its end."""

    kind: Literal["drug_era"] = "drug_era"
    codeset: int
    gap_days: Annotated[int, Field(ge=0, le=36_600)]
    offset: Days
    days_supply_override: Optional[Annotated[int, Field(ge=1, le=36_600)]] = None


class AtlasIndex(Model):
    """What the node's generic checks see as the index event: the primary criteria's concepts
    (a node whose vocabulary knows none of them refuses, rather than answer with a zero by
    construction)."""

    kind: Literal["atlas"] = "atlas"
    codes: list[str] = []


class AtlasCohort(Model):
    """A cohort as an ATLAS definition gives it (``kind: atlas``); its persons' index date is the
    start of their first cohort era."""

    kind: Literal["atlas"] = "atlas"
    name: Text = ""
    concept_sets: Annotated[list[ConceptSet], Field(max_length=500)] = []
    primary: Annotated[list[Events], Field(min_length=1, max_length=200)]
    prior_days: Annotated[int, Field(ge=0, le=36_600)] = 0
    post_days: Annotated[int, Field(ge=0, le=36_600)] = 0
    primary_limit: Limit = "first"
    additional: Optional[Group] = None
    qualified_limit: Limit = "first"
    inclusion_rules: Annotated[list[InclusionRule], Field(max_length=200)] = []
    expression_limit: Limit = "first"
    end: Optional[Annotated[Union[DateOffsetEnd, DrugEraEnd], Field(discriminator="kind")]] = None
    censoring: Annotated[list[Events], Field(max_length=200)] = []
    era_pad: Annotated[int, Field(ge=0, le=36_600)] = 0

    # the generic cohort's fields, as node checks and summaries read them (an ATLAS cohort has its
    # criteria inside the definition)
    @property
    def inclusion(self) -> list:
        return []

    @property
    def exclusion(self) -> list:
        return []

    @property
    def age(self) -> None:
        return None

    @property
    def sex(self) -> None:
        return None

    @property
    def index(self) -> AtlasIndex:
        sets = {cs.id: cs for cs in self.concept_sets}
        codes = [item.reference for ev in self.primary if ev.codeset in sets
                 for item in sets[ev.codeset].items if not item.excluded]
        return AtlasIndex(codes=list(dict.fromkeys(codes)))


Events.model_rebuild()
Group.model_rebuild()
Correlated.model_rebuild()
