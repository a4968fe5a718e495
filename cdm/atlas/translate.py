"""Circe cohort expression (ATLAS JSON) -> :class:`AtlasCohort`, or :class:`Untranslatable`.

The walk follows Circe's classes (``CohortExpression``, ``PrimaryCriteria``, ``CriteriaGroup``,
``CorelatedCriteria``, the domain criteria) key by key: every key is either translated or, when it
carries something (a non-empty list, a filter, ``true``), refused with its JSON path
(``$.InclusionRules[2].expression.CriteriaList[0].Criteria.VisitOccurrence.ProviderSpecialty``).
Keys that carry nothing (``ConditionTypeExclude: false``, ``CensorWindow: {}``) are accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cdm.atlas import model as M
from cdm.atlas import refusals as R

DOMAIN_NAMES = {
    "ConditionOccurrence": "condition", "ProcedureOccurrence": "procedure", "DrugExposure": "drug",
    "Measurement": "measurement", "Observation": "observation", "VisitOccurrence": "visit",
    "ObservationPeriod": "observation_period", "Death": "death", "DrugEra": "drug_era",
    "ConditionEra": "condition_era", "DeviceExposure": "device", "Specimen": "specimen",
    "VisitDetail": "visit_detail", "DoseEra": "dose_era",
}
_COMMON = {"CodesetId": "codeset", "First": "first", "OccurrenceStartDate": "start_date",
           "OccurrenceEndDate": "end_date", "Age": "age", "Gender": "gender", "CorrelatedCriteria": "correlated"}
_VALUES = {"ValueAsNumber": "value", "ValueAsConcept": "value_concepts", "Unit": "unit"}
_ERAS = {"CodesetId": "codeset", "First": "first", "EraStartDate": "start_date", "EraEndDate": "end_date",
         "EraLength": "era_length", "OccurrenceCount": "occurrence_count", "AgeAtStart": "age", "Gender": "gender",
         "CorrelatedCriteria": "correlated"}
_VISIT = {"VisitType": "visit_concepts", "ProviderSpecialty": "provider_specialty"}
#: Circe attribute -> AtlasCohort field, per domain
ATTRIBUTES = {
    "ConditionOccurrence": {**_COMMON, **_VISIT, "ConditionSourceConcept": "source_codeset"},
    "ProcedureOccurrence": {**_COMMON, **_VISIT, "ProcedureSourceConcept": "source_codeset"},
    "DrugExposure": {**_COMMON, **_VISIT, "DrugSourceConcept": "source_codeset"},
    "Measurement": {**_COMMON, **_VALUES, **_VISIT, "MeasurementSourceConcept": "source_codeset",
                    "RangeLow": "range_low", "RangeHigh": "range_high", "RangeLowRatio": "range_low_ratio",
                    "RangeHighRatio": "range_high_ratio"},
    "Observation": {**_COMMON, **_VALUES, **_VISIT, "ObservationSourceConcept": "source_codeset"},
    "VisitOccurrence": {**_COMMON, "VisitSourceConcept": "source_codeset", "ProviderSpecialty": "provider_specialty"},
    "ObservationPeriod": {"First": "first", "PeriodStartDate": "start_date", "PeriodEndDate": "end_date",
                          "PeriodLength": "period_length", "CorrelatedCriteria": "correlated"},
    "Death": {"CodesetId": "codeset", "OccurrenceStartDate": "start_date", "Age": "age", "Gender": "gender",
              "DeathSourceConcept": "source_codeset", "CorrelatedCriteria": "correlated"},
    "DrugEra": _ERAS,
    "ConditionEra": _ERAS,
    "DeviceExposure": {**_COMMON, **_VISIT, "DeviceSourceConcept": "source_codeset"},
    "Specimen": {**_COMMON},
    "VisitDetail": {"CodesetId": "codeset", "VisitDetailSourceConcept": "source_codeset", "Age": "age",
                    "Gender": "gender", "CorrelatedCriteria": "correlated"},
    "DoseEra": {"CodesetId": "codeset", "EraStartDate": "start_date", "EraEndDate": "end_date",
                "EraLength": "era_length", "AgeAtStart": "age", "Gender": "gender", "CorrelatedCriteria": "correlated"},
}
_NUMBER = {"age", "value", "range_low", "range_high", "range_low_ratio", "range_high_ratio", "era_length",
           "occurrence_count", "period_length"}
_DATE = {"start_date", "end_date"}
_CONCEPTS = {"gender", "value_concepts", "unit", "visit_concepts", "provider_specialty"}
LIMITS = {"First": "first", "Last": "last", "All": "all"}
GROUP_TYPES = {"ALL": "all", "ANY": "any", "AT_LEAST": "at_least", "AT_MOST": "at_most"}
OCCURRENCE_TYPES = {0: "exactly", 1: "at_most", 2: "at_least"}
COUNT_COLUMNS = {"DOMAIN_CONCEPT": "concept", "START_DATE": "start_date", "VISIT_ID": "visit"}
OPS = {"lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"}
TOP_KEYS = {"ConceptSets", "PrimaryCriteria", "AdditionalCriteria", "QualifiedLimit", "ExpressionLimit",
            "InclusionRules", "EndStrategy", "CensoringCriteria", "CollapseSettings", "CensorWindow",
            "cdmVersionRange", "Title"}


def _empty(value: Any) -> bool:
    return value in (None, False, [], {}, "")


class _Walk:
    def __init__(self, expression: dict):
        self.problems: list[tuple[str, str]] = []
        self.codesets: set[int] = set()
        self.expression = expression

    def refuse(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))

    # -- small values --------------------------------------------------------------------------

    def number(self, value, path: str, date: bool = False):
        if not isinstance(value, dict) or value.get("Op") not in OPS or value.get("Value") is None:
            self.refuse(path, R.BAD_VALUE.format(name=path.rsplit(".", 1)[-1], value=json.dumps(value)[:80]))
            return None
        out = {"op": value["Op"], "value": value["Value"]}
        if value.get("Extent") is not None:
            out["extent"] = value["Extent"]
        if value["Op"] in ("bt", "!bt") and value.get("Extent") is None:
            self.refuse(path, R.MISSING.format(name="Extent of a between range"))
            return None
        return out

    def concepts(self, items, path: str) -> list | None:
        out = []
        for i, c in enumerate(items or []):
            if not isinstance(c, dict) or not c.get("VOCABULARY_ID") or c.get("CONCEPT_CODE") in (None, ""):
                self.refuse(f"{path}[{i}]", R.CONCEPT_WITHOUT_CODE)
                continue
            out.append({"vocabulary": c["VOCABULARY_ID"], "concept_code": str(c["CONCEPT_CODE"])})
        return out or None

    def codeset(self, value, path: str):
        if not isinstance(value, int) or value not in self.codesets:
            self.refuse(path, R.UNKNOWN_CODESET)
            return None
        return value

    def limit(self, value, path: str) -> str:
        kind = (value or {}).get("Type", "First")
        if kind not in LIMITS:
            self.refuse(path + ".Type", R.BAD_VALUE.format(name="limit Type", value=kind))
            return "first"
        return LIMITS[kind]

    # -- concept sets --------------------------------------------------------------------------

    def concept_sets(self, sets, path: str) -> list:
        out = []
        for i, cs in enumerate(sets or []):
            where = f"{path}[{i}]"
            if not isinstance(cs, dict) or not isinstance(cs.get("id"), int):
                self.refuse(where, R.MISSING.format(name="concept set id"))
                continue
            items = []
            for j, item in enumerate(((cs.get("expression") or {}).get("items")) or []):
                concept = (item or {}).get("concept") or {}
                if not concept.get("VOCABULARY_ID") or concept.get("CONCEPT_CODE") in (None, ""):
                    self.refuse(f"{where}.expression.items[{j}].concept", R.CONCEPT_WITHOUT_CODE)
                    continue
                items.append({"vocabulary": concept["VOCABULARY_ID"], "concept_code": str(concept["CONCEPT_CODE"]),
                              "descendants": bool(item.get("includeDescendants")),
                              "excluded": bool(item.get("isExcluded")), "mapped": bool(item.get("includeMapped"))})
            self.codesets.add(cs["id"])
            out.append({"id": cs["id"], "name": str(cs.get("name") or "")[:400], "items": items})
        return out

    # -- criteria ------------------------------------------------------------------------------

    def criterion(self, node, path: str) -> dict | None:
        if not isinstance(node, dict) or len(node) != 1:
            self.refuse(path, R.MISSING.format(name="criterion (one domain per criterion)"))
            return None
        (name, attrs), = node.items()
        where = f"{path}.{name}"
        if name not in ATTRIBUTES:
            self.refuse(where, R.UNSUPPORTED_DOMAIN.format(name=name))
            return None
        out: dict = {"domain": DOMAIN_NAMES[name]}
        for key, value in (attrs or {}).items():
            field = ATTRIBUTES[name].get(key)
            at = f"{where}.{key}"
            if field is None:
                if key.endswith("TypeExclude") and _empty(attrs.get(key[: -len("Exclude")])):
                    continue  # Circe applies the flag to the type list only: without one it does nothing
                if _empty(value):
                    continue
                if key.endswith("Type") and key[:-4] in name:  # ConditionType, DrugType...: record types
                    self.refuse(at, R.TYPE_FILTER.format(domain=name, name=key))
                else:
                    self.refuse(at, R.UNSUPPORTED_ATTRIBUTE.format(domain=name, name=key))
                continue
            if value is None:
                continue
            if field in ("codeset", "source_codeset"):
                out[field] = self.codeset(value, at)
            elif field == "first":
                out[field] = bool(value)
            elif field == "correlated":
                out[field] = self.group(value, at)
            elif field in _NUMBER or field in _DATE:
                out[field] = self.number(value, at)
            elif field in _CONCEPTS:
                out[field] = self.concepts(value, at)
        return {k: v for k, v in out.items() if v is not None}

    def window(self, value, path: str, end_window: bool = False) -> dict | None:
        if not isinstance(value, dict):
            self.refuse(path, R.MISSING.format(name="window"))
            return None
        event_end = value.get("UseEventEnd")  # an end window without it reads the event's end (Circe)
        out = {"index_end": bool(value.get("UseIndexEnd")),
               "event_end": bool(event_end) if event_end is not None or not end_window else True}
        for part in ("Start", "End"):
            bound = value.get(part) or {}
            coeff = bound.get("Coeff", -1 if part == "Start" else 1)
            if coeff not in (-1, 1):
                self.refuse(f"{path}.{part}.Coeff", R.BAD_VALUE.format(name="Coeff", value=coeff))
                return None
            out[part.lower()] = {"days": bound.get("Days"), "coeff": coeff}
        return out

    def correlated(self, node, path: str) -> dict | None:
        if not isinstance(node, dict):
            self.refuse(path, R.MISSING.format(name="correlated criterion"))
            return None
        out: dict = {}
        for key, value in node.items():
            at = f"{path}.{key}"
            if key == "Criteria":
                out["events"] = self.criterion(value, at)
            elif key == "StartWindow":
                out["start_window"] = self.window(value, at)
            elif key == "EndWindow":
                if value is not None:
                    out["end_window"] = self.window(value, at, end_window=True)
            elif key == "RestrictVisit":
                out["restrict_visit"] = bool(value)
            elif key == "IgnoreObservationPeriod":
                out["ignore_observation_period"] = bool(value)
            elif key == "Occurrence":
                occ = value or {}
                if occ.get("Type") not in OCCURRENCE_TYPES or not isinstance(occ.get("Count"), int):
                    self.refuse(at, R.BAD_VALUE.format(name="Occurrence", value=json.dumps(occ)[:80]))
                    continue
                column = occ.get("CountColumn") or "DOMAIN_CONCEPT"
                if column not in COUNT_COLUMNS:
                    self.refuse(at + ".CountColumn", R.BAD_VALUE.format(name="CountColumn", value=column))
                    continue
                out["occurrence"] = {"type": OCCURRENCE_TYPES[occ["Type"]], "count": occ["Count"],
                                     "distinct": bool(occ.get("IsDistinct")), "column": COUNT_COLUMNS[column]}
            elif not _empty(value):
                self.refuse(at, R.UNSUPPORTED_KEY.format(name=key))
        if "start_window" not in out:
            out["start_window"] = {"start": {"days": None, "coeff": -1}, "end": {"days": None, "coeff": 1}}
        out.setdefault("occurrence", {"type": "at_least", "count": 1})
        return out if out.get("events") else None

    def demographic(self, node, path: str) -> dict:
        out: dict = {}
        names = {"Age": "age", "Gender": "gender", "Race": "race", "Ethnicity": "ethnicity",
                 "OccurrenceStartDate": "start_date", "OccurrenceEndDate": "end_date"}
        for key, value in (node or {}).items():
            at = f"{path}.{key}"
            if key not in names:
                if not _empty(value):
                    self.refuse(at, R.UNSUPPORTED_ATTRIBUTE.format(domain="DemographicCriteria", name=key))
                continue
            if value is None:
                continue
            field = names[key]
            out[field] = self.number(value, at) if field in ("age", "start_date", "end_date") else self.concepts(value, at)
        return {k: v for k, v in out.items() if v is not None}

    def group(self, node, path: str) -> dict | None:
        if not isinstance(node, dict):
            self.refuse(path, R.MISSING.format(name="criteria group"))
            return None
        kind = node.get("Type", "ALL")
        if kind not in GROUP_TYPES:
            self.refuse(path + ".Type", R.BAD_VALUE.format(name="group Type", value=kind))
            return None
        out = {"type": GROUP_TYPES[kind], "criteria": [], "demographics": [], "groups": []}
        if kind in ("AT_LEAST", "AT_MOST"):
            out["count"] = node.get("Count") or 0
        for key, value in node.items():
            at = f"{path}.{key}"
            if key == "CriteriaList":
                out["criteria"] = [x for i, c in enumerate(value or []) if (x := self.correlated(c, f"{at}[{i}]"))]
            elif key == "DemographicCriteriaList":
                out["demographics"] = [self.demographic(d, f"{at}[{i}]") for i, d in enumerate(value or [])]
            elif key == "Groups":
                out["groups"] = [x for i, g in enumerate(value or []) if (x := self.group(g, f"{at}[{i}]"))]
            elif key not in ("Type", "Count") and not _empty(value):
                self.refuse(at, R.UNSUPPORTED_KEY.format(name=key))
        return out

    # -- the expression ------------------------------------------------------------------------

    def cohort(self, name: str) -> dict:
        e = self.expression
        out: dict = {"kind": "atlas", "name": name[:400]}
        for key, value in e.items():
            if key not in TOP_KEYS and not _empty(value):
                self.refuse(f"$.{key}", R.UNSUPPORTED_KEY.format(name=key))
        out["concept_sets"] = self.concept_sets(e.get("ConceptSets"), "$.ConceptSets")
        pc = e.get("PrimaryCriteria") or {}
        out["primary"] = [x for i, c in enumerate(pc.get("CriteriaList") or [])
                          if (x := self.criterion(c, f"$.PrimaryCriteria.CriteriaList[{i}]"))]
        if not pc.get("CriteriaList"):
            self.refuse("$.PrimaryCriteria.CriteriaList", R.MISSING.format(name="primary criteria"))
        window = pc.get("ObservationWindow") or {}
        out["prior_days"], out["post_days"] = window.get("PriorDays") or 0, window.get("PostDays") or 0
        out["primary_limit"] = self.limit(pc.get("PrimaryCriteriaLimit"), "$.PrimaryCriteria.PrimaryCriteriaLimit")
        for key in pc:
            if key not in ("CriteriaList", "ObservationWindow", "PrimaryCriteriaLimit") and not _empty(pc[key]):
                self.refuse(f"$.PrimaryCriteria.{key}", R.UNSUPPORTED_KEY.format(name=key))
        if e.get("AdditionalCriteria"):
            out["additional"] = self.group(e["AdditionalCriteria"], "$.AdditionalCriteria")
        out["qualified_limit"] = self.limit(e.get("QualifiedLimit"), "$.QualifiedLimit")
        out["expression_limit"] = self.limit(e.get("ExpressionLimit"), "$.ExpressionLimit")
        out["inclusion_rules"] = []
        for i, rule in enumerate(e.get("InclusionRules") or []):
            g = self.group((rule or {}).get("expression"), f"$.InclusionRules[{i}].expression")
            if g is not None:
                out["inclusion_rules"].append({"name": str(rule.get("name") or f"rule {i + 1}")[:400], "expression": g})
        out["end"] = self.end_strategy(e.get("EndStrategy"), "$.EndStrategy")
        out["censoring"] = [x for i, c in enumerate(e.get("CensoringCriteria") or [])
                            if (x := self.criterion(c, f"$.CensoringCriteria[{i}]"))]
        collapse = e.get("CollapseSettings") or {}
        if collapse.get("CollapseType", "ERA") != "ERA":
            self.refuse("$.CollapseSettings.CollapseType", R.BAD_VALUE.format(name="CollapseType",
                                                                            value=collapse.get("CollapseType")))
        out["era_pad"] = collapse.get("EraPad") or 0
        censor = e.get("CensorWindow") or {}
        if censor.get("StartDate") or censor.get("EndDate"):
            self.refuse("$.CensorWindow", R.UNSUPPORTED_KEY.format(name="CensorWindow (calendar censoring)"))
        return out

    def end_strategy(self, node, path: str) -> dict | None:
        if _empty(node):
            return None
        if "DateOffset" in node:
            d = node["DateOffset"] or {}
            field = {"StartDate": "start", "EndDate": "end"}.get(d.get("DateField"))
            if field is None:
                self.refuse(path + ".DateOffset.DateField", R.BAD_VALUE.format(name="DateField", value=d.get("DateField")))
                return None
            return {"kind": "date_offset", "field": field, "offset": d.get("Offset") or 0}
        if "CustomEra" in node:
            d = node["CustomEra"] or {}
            out = {"kind": "drug_era", "codeset": self.codeset(d.get("DrugCodesetId"), path + ".CustomEra.DrugCodesetId"),
                   "gap_days": d.get("GapDays") or 0, "offset": d.get("Offset") or 0}
            if d.get("DaysSupplyOverride"):
                out["days_supply_override"] = d["DaysSupplyOverride"]
            return out if out["codeset"] is not None else None
        self.refuse(path, R.UNSUPPORTED_KEY.format(name="EndStrategy " + ",".join(node)))
        return None


def translate(expression: Any, name: str = "") -> M.AtlasCohort:
    """The :class:`AtlasCohort` of a Circe expression (a dict or JSON text); :class:`Untranslatable`
    lists every part that is not translated, each with its JSON path."""
    if isinstance(expression, (str, bytes)):
        try:
            expression = json.loads(expression)
        except ValueError:
            raise R.Untranslatable([("$", R.NOT_JSON)]) from None
    if isinstance(expression, dict) and isinstance(expression.get("expression"), dict) and "PrimaryCriteria" not in expression:
        name = name or str(expression.get("name") or "")  # an ATLAS export: {name, expression: {...}}
        expression = expression["expression"]
    if not isinstance(expression, dict) or "PrimaryCriteria" not in expression:
        raise R.Untranslatable([("$", R.NOT_JSON)])
    walk = _Walk(expression)
    data = walk.cohort(name)
    if walk.problems:
        raise R.Untranslatable(walk.problems)
    try:
        return M.AtlasCohort.model_validate(data)
    except ValidationError as exc:
        raise R.Untranslatable([("$." + ".".join(str(p) for p in err["loc"]), err["msg"])
                                for err in exc.errors(include_url=False, include_input=False)]) from None


def load(path: str | Path, name: str = "") -> M.AtlasCohort:
    """Translate an ATLAS JSON file."""
    return translate(Path(path).read_bytes(), name or Path(path).stem)


def atlas_spec(expression: Any, analysis: dict | None = None, variables: dict | None = None,
               name: str = "") -> dict:
    """A radfed spec (as a dict, for :func:`cdm.spec.parse_spec`) whose cohort is the translated
    definition; the analysis defaults to a count.  :class:`Untranslatable` before anything runs."""
    cohort = translate(expression, name)
    spec = {"cohort": cohort.model_dump(mode="json", exclude_none=True),
            "analysis": analysis or {"type": "count"}}
    if variables:
        spec["variables"] = variables
    return spec


def read_analysis(text: str | None) -> tuple[dict | None, dict | None]:
    """``--analysis``: a YAML/JSON mapping given inline or as a file, either an analysis
    (``{type: ...}``) or ``{analysis: ..., variables: ...}``.  (analysis, variables)."""
    if not text:
        return None, None
    import yaml

    source = Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text
    data = yaml.safe_load(source)
    if not isinstance(data, dict):
        raise ValueError("--analysis must be a mapping such as '{type: count}' or a file holding one")
    if "analysis" in data:
        return data["analysis"], data.get("variables")
    return data, None


def spec_from_file(path: str | Path, analysis: str | None = None) -> dict:
    """The spec of the ATLAS definition in the file ``path`` with an ``--analysis`` text
    (:func:`read_analysis`): what ``radfed query run --atlas`` sends and ``radfed-node query --atlas``
    runs.  :class:`Untranslatable` when it does not translate exactly; ValueError or OSError for an
    unreadable file or a malformed ``--analysis``."""
    chosen, variables = read_analysis(analysis)
    return atlas_spec(Path(path).read_bytes(), chosen, variables, Path(path).stem)
