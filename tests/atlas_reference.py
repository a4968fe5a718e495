"""An independent reference for ATLAS cohorts: Circe's semantics written in pandas over the CSV
files of an OMOP export, reading the Circe JSON itself (not radfed's translation).

Written from the Circe documentation (Book of OHDSI ch. 10, circe-be's query templates): events
per domain with Circe's start/end dates, concept sets expanded through CONCEPT_ANCESTOR and
CONCEPT_RELATIONSHIP, the observation window, the three limits, window criteria with occurrence
counts, groups, demographic criteria, the end strategies, censoring and the era collapse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)
# domain -> (file, id, concept, start, end column or None, source concept column)
DOMAINS = {
    "ConditionOccurrence": ("CONDITION_OCCURRENCE", "condition_occurrence_id", "condition_concept_id",
                            "condition_start_date", "condition_end_date", "condition_source_concept_id"),
    "ProcedureOccurrence": ("PROCEDURE_OCCURRENCE", "procedure_occurrence_id", "procedure_concept_id",
                            "procedure_date", "procedure_end_date", "procedure_source_concept_id"),
    "DrugExposure": ("DRUG_EXPOSURE", "drug_exposure_id", "drug_concept_id", "drug_exposure_start_date",
                     "drug_exposure_end_date", "drug_source_concept_id"),
    "Measurement": ("MEASUREMENT", "measurement_id", "measurement_concept_id", "measurement_date", None,
                    "measurement_source_concept_id"),
    "Observation": ("OBSERVATION", "observation_id", "observation_concept_id", "observation_date", None,
                    "observation_source_concept_id"),
    "VisitOccurrence": ("VISIT_OCCURRENCE", "visit_occurrence_id", "visit_concept_id", "visit_start_date",
                        "visit_end_date", "visit_source_concept_id"),
    "ObservationPeriod": ("OBSERVATION_PERIOD", "observation_period_id", None, "observation_period_start_date",
                          "observation_period_end_date", None),
    "Death": ("DEATH", "person_id", "cause_concept_id", "death_date", None, "cause_source_concept_id"),
    "DrugEra": ("DRUG_ERA", "drug_era_id", "drug_concept_id", "drug_era_start_date", "drug_era_end_date", None),
    "ConditionEra": ("CONDITION_ERA", "condition_era_id", "condition_concept_id", "condition_era_start_date",
                     "condition_era_end_date", None),
    "Specimen": ("SPECIMEN", "specimen_id", "specimen_concept_id", "specimen_date", None, None),
    "VisitDetail": ("VISIT_DETAIL", "visit_detail_id", "visit_detail_concept_id", "visit_detail_start_date",
                    "visit_detail_end_date", "visit_detail_source_concept_id"),
    "DoseEra": ("DOSE_ERA", "dose_era_id", "drug_concept_id", "dose_era_start_date", "dose_era_end_date", None),
    "DeviceExposure": ("DEVICE_EXPOSURE", "device_exposure_id", "device_concept_id", "device_exposure_start_date",
                       "device_exposure_end_date", "device_source_concept_id"),
}
SOURCE_KEYS = ("ConditionSourceConcept", "ProcedureSourceConcept", "DrugSourceConcept", "MeasurementSourceConcept",
               "ObservationSourceConcept", "VisitSourceConcept", "DeathSourceConcept", "DeviceSourceConcept",
               "VisitDetailSourceConcept")


def _compare(series: pd.Series, f: dict | None) -> pd.Series:
    if f is None:
        return pd.Series(True, index=series.index)
    v, x = f["Value"], f.get("Extent")
    if isinstance(v, str):
        v, x = pd.Timestamp(v), (pd.Timestamp(x) if x else None)
    op = f["Op"]
    if op in ("bt", "!bt"):
        inside = (series >= v) & (series <= x)
        return inside if op == "bt" else ~inside & series.notna()
    return {"lt": series < v, "lte": series <= v, "eq": series == v, "!eq": (series != v) & series.notna(),
            "gt": series > v, "gte": series >= v}[op]


class Circe:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._tables: dict[str, pd.DataFrame] = {}
        concept = self.table("CONCEPT")
        self.by_code = {(r.vocabulary_id, str(r.concept_code)): int(r.concept_id) for r in concept.itertuples()}
        self.ancestor = self.table("CONCEPT_ANCESTOR")
        rel = self.table("CONCEPT_RELATIONSHIP")
        self.maps_to = rel[(rel.relationship_id == "Maps to") & rel.invalid_reason.isna()] if len(rel) else rel

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            path = self.folder / f"{name}.csv"
            df = pd.read_csv(path, dtype={"concept_code": str}, keep_default_na=True) if path.exists() else pd.DataFrame()
            for c in df.columns:
                if c.endswith("_date"):
                    df[c] = pd.to_datetime(df[c])
            self._tables[name] = df
        return self._tables[name]

    # -- concept sets -------------------------------------------------------------------------------

    def _concept(self, c: dict) -> int | None:
        return self.by_code.get((c["VOCABULARY_ID"], str(c["CONCEPT_CODE"])))

    def _expand(self, items) -> set[int]:
        out: set[int] = set()
        for item in items:
            cid = self._concept(item["concept"])
            if cid is None:
                continue
            ids = {cid}
            if item.get("includeDescendants") and len(self.ancestor):
                ids |= set(self.ancestor[self.ancestor.ancestor_concept_id == cid].descendant_concept_id)
            if item.get("includeMapped") and len(self.maps_to):
                ids |= set(self.maps_to[self.maps_to.concept_id_2.isin(ids)].concept_id_1)
            out |= ids
        return out

    def codeset(self, cid: int) -> set[int]:
        cs = next(c for c in self.expression["ConceptSets"] if c["id"] == cid)
        items = cs["expression"]["items"]
        return self._expand([i for i in items if not i.get("isExcluded")]) - \
            self._expand([i for i in items if i.get("isExcluded")])

    def concepts(self, lst) -> set[int]:
        return {i for i in (self._concept(c) for c in lst) if i is not None}

    # -- criteria -----------------------------------------------------------------------------------

    def events(self, node: dict) -> pd.DataFrame:
        (name, a), = node.items()
        file, id_col, concept_col, start_col, end_col, source_col = DOMAINS[name]
        t = self.table(file)
        out = pd.DataFrame({"person_id": t.person_id, "event_id": t[id_col], "start_date": t[start_col]})
        if name == "DrugExposure":
            supply = out.start_date + pd.to_timedelta(t.days_supply, unit="D")
            out["end_date"] = t[end_col].fillna(supply).fillna(out.start_date + DAY)
        elif name == "ProcedureOccurrence":
            out["end_date"] = out.start_date + DAY
        elif end_col in ("condition_end_date", "device_exposure_end_date"):
            out["end_date"] = t[end_col].fillna(out.start_date + DAY)
        elif end_col:
            out["end_date"] = t[end_col]
        else:
            out["end_date"] = out.start_date + DAY
        out["visit_occurrence_id"] = t["visit_occurrence_id"] if "visit_occurrence_id" in t else np.nan
        out["concept_id"] = t[concept_col] if concept_col else np.nan
        keep = pd.Series(True, index=out.index)
        if a.get("CodesetId") is not None and concept_col:
            keep &= out.concept_id.isin(self.codeset(a["CodesetId"]))
        for key in SOURCE_KEYS:
            if a.get(key) is not None:
                keep &= t[source_col].isin(self.codeset(a[key]))
        if a.get("First"):
            firsts = out[keep].sort_values(["start_date", "event_id"]).groupby("person_id").head(1).index
            keep &= out.index.isin(firsts)
        keep &= _compare(out.start_date, a.get("OccurrenceStartDate") or a.get("EraStartDate") or a.get("PeriodStartDate"))
        keep &= _compare(out.end_date, a.get("OccurrenceEndDate") or a.get("EraEndDate") or a.get("PeriodEndDate"))
        for key, col in (("ValueAsNumber", "value_as_number"), ("RangeLow", "range_low"), ("RangeHigh", "range_high")):
            if a.get(key):
                keep &= _compare(t[col], a[key])
        for key, col in (("ValueAsConcept", "value_as_concept_id"), ("Unit", "unit_concept_id")):
            if a.get(key):
                keep &= t[col].isin(self.concepts(a[key]))
        if a.get("RangeLowRatio"):
            keep &= _compare(t.value_as_number / t.range_low.replace(0, np.nan), a["RangeLowRatio"])
        if a.get("RangeHighRatio"):
            keep &= _compare(t.value_as_number / t.range_high.replace(0, np.nan), a["RangeHighRatio"])
        length = a.get("EraLength") or a.get("PeriodLength")
        if length:
            keep &= _compare((out.end_date - out.start_date).dt.days, length)
        if a.get("OccurrenceCount"):
            col = "drug_exposure_count" if name == "DrugEra" else "condition_occurrence_count"
            keep &= _compare(t[col], a["OccurrenceCount"])
        if a.get("VisitType") and name != "VisitOccurrence":
            visits = self.table("VISIT_OCCURRENCE")
            wanted = visits[visits.visit_concept_id.isin(self.concepts(a["VisitType"]))]
            keep &= pd.Series(list(zip(t.person_id, t.visit_occurrence_id)), index=t.index).isin(
                set(zip(wanted.person_id, wanted.visit_occurrence_id)))
        if a.get("ProviderSpecialty"):
            providers = self.table("PROVIDER")
            wanted = providers[providers.specialty_concept_id.isin(self.concepts(a["ProviderSpecialty"]))]
            keep &= t.provider_id.isin(set(wanted.provider_id))
        person = self.table("PERSON").set_index("person_id")
        age = a.get("Age") or a.get("AgeAtStart")
        if age:
            keep &= _compare(out.start_date.dt.year - out.person_id.map(person.year_of_birth), age)
        if a.get("Gender"):
            keep &= out.person_id.map(person.gender_concept_id).isin(self.concepts(a["Gender"]))
        out = out[keep]
        if a.get("CorrelatedCriteria"):
            anchored = self.in_period(out)
            out = anchored[self.group(a["CorrelatedCriteria"], anchored)][out.columns]
        return out.reset_index(drop=True)

    def in_period(self, ev: pd.DataFrame) -> pd.DataFrame:
        op = self.table("OBSERVATION_PERIOD")[["person_id", "observation_period_start_date",
                                                "observation_period_end_date"]]
        m = ev.merge(op, on="person_id")
        m = m[(m.start_date >= m.observation_period_start_date) & (m.start_date <= m.observation_period_end_date)]
        return m.rename(columns={"observation_period_start_date": "op_start_date",
                                 "observation_period_end_date": "op_end_date"}).reset_index(drop=True)

    # -- correlated criteria and groups -------------------------------------------------------------

    def _window_ok(self, m: pd.DataFrame, w: dict, event_col: str, check: bool) -> pd.Series:
        anchor = m.end_date_p if w.get("UseIndexEnd") else m.start_date_p
        ok = pd.Series(True, index=m.index)
        for part, low in (("Start", True), ("End", False)):
            b = w.get(part) or {}
            coeff = b.get("Coeff", -1 if part == "Start" else 1)
            if b.get("Days") is not None:
                limit = anchor + pd.to_timedelta(b["Days"] * coeff, unit="D")
            elif check:
                limit = m.op_start_date if coeff == -1 else m.op_end_date
            else:
                continue
            ok &= (m[event_col] >= limit) if low else (m[event_col] <= limit)
        return ok

    def correlated(self, c: dict, P: pd.DataFrame) -> pd.Series:
        A = self.events(c["Criteria"])
        m = P.reset_index().merge(A, on="person_id", suffixes=("_p", ""))
        check = not c.get("IgnoreObservationPeriod")
        sw = c.get("StartWindow") or {}
        ok = self._window_ok(m, sw, "end_date" if sw.get("UseEventEnd") else "start_date", check)
        if check:
            ok &= (m.start_date >= m.op_start_date) & (m.start_date <= m.op_end_date)
        ew = c.get("EndWindow")
        if ew:
            ok &= self._window_ok(m, ew, "end_date" if ew.get("UseEventEnd", True) else "start_date", check)
        if c.get("RestrictVisit"):
            ok &= m.visit_occurrence_id == m.visit_occurrence_id_p
        m = m[ok]
        occ = c.get("Occurrence") or {"Type": 2, "Count": 1}
        if occ.get("IsDistinct"):
            col = {"START_DATE": "start_date", "VISIT_ID": "visit_occurrence_id"}.get(occ.get("CountColumn"), "concept_id")
            counts = m.groupby("index")[col].nunique()
        else:
            counts = m.groupby("index").size()
        n = counts.reindex(P.index, fill_value=0)
        return {0: n == occ["Count"], 1: n <= occ["Count"], 2: n >= occ["Count"]}[occ["Type"]]

    def demographic(self, d: dict, P: pd.DataFrame) -> pd.Series:
        person = self.table("PERSON").set_index("person_id")
        ok = pd.Series(True, index=P.index)
        if d.get("Age"):
            ok &= _compare(P.start_date.dt.year - P.person_id.map(person.year_of_birth), d["Age"])
        for key, col in (("Gender", "gender_concept_id"), ("Race", "race_concept_id"), ("Ethnicity", "ethnicity_concept_id")):
            if d.get(key):
                ok &= P.person_id.map(person[col]).isin(self.concepts(d[key]))
        ok &= _compare(P.start_date, d.get("OccurrenceStartDate")) & _compare(P.end_date, d.get("OccurrenceEndDate"))
        return ok

    def group(self, g: dict, P: pd.DataFrame) -> pd.Series:
        parts = [self.correlated(c, P) for c in g.get("CriteriaList") or []]
        parts += [self.demographic(d, P) for d in g.get("DemographicCriteriaList") or []]
        parts += [self.group(x, P) for x in g.get("Groups") or []]
        if not parts:
            return pd.Series(True, index=P.index)
        met = sum(p.astype(int) for p in parts)
        kind = g.get("Type", "ALL")
        return {"ALL": met == len(parts), "ANY": met > 0, "AT_LEAST": met >= (g.get("Count") or 0),
                "AT_MOST": met <= (g.get("Count") or 0)}[kind]

    # -- the cohort ---------------------------------------------------------------------------------

    @staticmethod
    def _limit(ev: pd.DataFrame, limit: dict | None) -> pd.DataFrame:
        kind = (limit or {}).get("Type", "First")
        if kind == "All":
            return ev
        ordered = ev.sort_values(["start_date", "key"], ascending=kind == "First")
        return ordered.groupby("person_id").head(1).sort_index()

    def cohort(self, expression: dict) -> pd.DataFrame:
        """(person_id, cohort_start_date, cohort_end_date), sorted."""
        self.expression = expression
        pc = expression["PrimaryCriteria"]
        ev = pd.concat([self.events(c) for c in pc["CriteriaList"]], ignore_index=True)
        ev = self.in_period(ev)
        w = pc.get("ObservationWindow") or {}
        ev = ev[(ev.op_start_date + pd.to_timedelta(w.get("PriorDays", 0), unit="D") <= ev.start_date)
                & (ev.start_date + pd.to_timedelta(w.get("PostDays", 0), unit="D") <= ev.op_end_date)]
        ev = ev.sort_values(["person_id", "start_date", "event_id", "end_date"]).reset_index(drop=True)
        ev["key"] = np.arange(len(ev))
        ev = self._limit(ev, pc.get("PrimaryCriteriaLimit")).reset_index(drop=True)
        if expression.get("AdditionalCriteria"):
            ev = ev[self.group(expression["AdditionalCriteria"], ev)].reset_index(drop=True)
        ev = self._limit(ev, expression.get("QualifiedLimit")).reset_index(drop=True)
        self.qualified = ev
        for rule in expression.get("InclusionRules") or []:
            ev = ev[self.group(rule["expression"], ev)].reset_index(drop=True)
        ev = self._limit(ev, expression.get("ExpressionLimit")).reset_index(drop=True)
        ends = self.ends(expression, ev)
        ends = ends[ends.end >= ends.start_date]
        rows = ends.groupby(["key", "person_id", "start_date"], as_index=False).end.min()
        return self.collapse(rows, (expression.get("CollapseSettings") or {}).get("EraPad", 0))

    def ends(self, expression: dict, ev: pd.DataFrame) -> pd.DataFrame:
        strategy = expression.get("EndStrategy") or {}
        parts = []
        if "DateOffset" in strategy:
            d = strategy["DateOffset"]
            base = ev.start_date if d["DateField"] == "StartDate" else ev.end_date
            offset = max(-80_000, min(80_000, d["Offset"]))  # pandas dates end in 2262; the period ends first
            shifted = base + pd.to_timedelta(offset, unit="D")
            parts.append(ev.assign(end=shifted.where(shifted <= ev.op_end_date, ev.op_end_date)))
        elif "CustomEra" in strategy:
            d = strategy["CustomEra"]
            eras = self.drug_eras(d)
            m = ev.merge(eras, on="person_id")
            m = m[(m.start_date >= m.era_start) & (m.start_date <= m.era_end)]
            parts.append(m.assign(end=m.era_end)[list(ev.columns) + ["end"]])
        else:
            parts.append(ev.assign(end=ev.op_end_date))
        for c in expression.get("CensoringCriteria") or []:
            C = self.events(c)
            m = ev.merge(C[["person_id", "start_date"]], on="person_id", suffixes=("", "_c"))
            m = m[(m.start_date_c >= m.start_date) & (m.start_date_c <= m.op_end_date)]
            first = m.groupby("key").start_date_c.min()
            parts.append(ev[ev.key.isin(first.index)].assign(end=lambda x: x.key.map(first)))
        return pd.concat(parts, ignore_index=True)

    def drug_eras(self, d: dict) -> pd.DataFrame:
        t = self.table("DRUG_EXPOSURE")
        codes = self.codeset(d["DrugCodesetId"])
        t = pd.concat([t[t.drug_concept_id.isin(codes)], t[t.drug_source_concept_id.isin(codes)]])
        start = t.drug_exposure_start_date
        if d.get("DaysSupplyOverride"):
            end = start + pd.to_timedelta(d["DaysSupplyOverride"], unit="D")
        else:
            end = t.drug_exposure_end_date.fillna(start + pd.to_timedelta(t.days_supply, unit="D")).fillna(start + DAY)
        rows = pd.DataFrame({"person_id": t.person_id, "start_date": start, "end": end})
        eras = self.collapse(rows, d.get("GapDays", 0))
        eras["cohort_end_date"] += pd.to_timedelta(d.get("Offset", 0), unit="D")
        return eras.rename(columns={"cohort_start_date": "era_start", "cohort_end_date": "era_end"})

    @staticmethod
    def collapse(rows: pd.DataFrame, pad: int) -> pd.DataFrame:
        """Merge each person's [start, end + pad] intervals that overlap; end = merged end - pad."""
        out = []
        padded = pd.to_timedelta(pad, unit="D")
        for person, g in rows.sort_values(["person_id", "start_date"]).groupby("person_id"):
            cur_s = cur_e = None
            for s, e in zip(g.start_date, g.end + padded):
                if cur_s is not None and s <= cur_e:
                    cur_e = max(cur_e, e)
                else:
                    if cur_s is not None:
                        out.append((person, cur_s, cur_e - padded))
                    cur_s, cur_e = s, e
            out.append((person, cur_s, cur_e - padded))
        return pd.DataFrame(out, columns=["person_id", "cohort_start_date", "cohort_end_date"]).astype(
            {"cohort_start_date": "datetime64[ns]", "cohort_end_date": "datetime64[ns]"})
