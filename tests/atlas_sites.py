"""Shaped OMOP data for ATLAS definitions: for a set of real PhenotypeLibrary definitions, a site
whose data exercises what they say — their concepts (with a synthetic descendant for each
``includeDescendants`` item, and excluded concepts placed under included ones), persons of both
sexes over 70 years of birth, one or two observation periods, and events of every domain the
definitions read, dated inside and outside the periods, with values, value concepts, units,
visits and days of supply drawn around what the criteria ask.

The rows are inserted into a radfed CDM (SQLite or PostgreSQL) and exported as OMOP CSV files, so
the node and the pandas reference (tests/atlas_reference.py) read the same data.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from pathlib import Path

from sqlalchemy import insert, select

from cdm.schema import tables
from omop_sites import export_csv

CHILD_BASE = 1_900_000_000
DOMAIN_TABLES = {"ConditionOccurrence": "condition_occurrence", "ProcedureOccurrence": "procedure_occurrence",
                 "DrugExposure": "drug_exposure", "Measurement": "measurement", "Observation": "observation",
                 "VisitOccurrence": "visit_occurrence", "Death": "death", "DrugEra": "drug_era",
                 "ConditionEra": "condition_era", "DeviceExposure": "device_exposure", "Specimen": "specimen",
                 "VisitDetail": "visit_detail", "DoseEra": "dose_era"}
EXPORTED = ["concept", "concept_ancestor", "concept_relationship", "person", "observation_period", "provider",
            *[t for t in DOMAIN_TABLES.values()]]


def _walk(node, found):
    """(domain, codeset id) of every criterion; value concepts and units by domain."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in DOMAIN_TABLES and isinstance(value, dict):
                if value.get("CodesetId") is not None:
                    found["codesets"][key].add(value["CodesetId"])
                for attr in ("ValueAsConcept", "Unit", "VisitType", "ProviderSpecialty"):
                    for c in value.get(attr) or []:
                        found[attr][key].add(c["CONCEPT_ID"])
                        found["concepts"][c["CONCEPT_ID"]] = c
                for attr in ("ValueAsNumber", "RangeLow", "RangeHigh"):
                    if value.get(attr):
                        found["numbers"][key].append(value[attr].get("Value", 0))
            if key == "CustomEra" and isinstance(value, dict):
                found["codesets"]["DrugExposure"].add(value.get("DrugCodesetId"))
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def shape(engine, definitions: list[dict], folder: Path, seed: int = 21, persons: int = 300,
          items_per_set: int = 6) -> Path:
    """Fill ``engine`` (an initialised CDM) with data for ``definitions``; export it to ``folder``."""
    rnd = random.Random(seed)
    found = {"codesets": defaultdict(set), "ValueAsConcept": defaultdict(set), "Unit": defaultdict(set),
             "VisitType": defaultdict(set), "ProviderSpecialty": defaultdict(set),
             "numbers": defaultdict(list), "concepts": {}}
    concepts: dict[int, dict] = {}
    ancestors: set[tuple[int, int]] = set()
    pools: dict[str, set[int]] = defaultdict(set)
    child = CHILD_BASE
    for d, definition in enumerate(definitions):
        _walk(definition, found)
        set_ids: dict[int, set[int]] = {}
        for cs in definition["ConceptSets"]:
            items = cs["expression"]["items"]
            included = [i for i in items if not i.get("isExcluded")][:items_per_set]
            excluded = [i for i in items if i.get("isExcluded")][:items_per_set]
            ids = set()
            parent = None
            for item in included + excluded:
                c = item["concept"]
                concepts[c["CONCEPT_ID"]] = c
                ids.add(c["CONCEPT_ID"])
                if item.get("includeDescendants"):
                    child += 1
                    concepts[child] = {**c, "CONCEPT_ID": child, "CONCEPT_CODE": f"{c['CONCEPT_CODE']}-d{child}"}
                    ancestors.add((c["CONCEPT_ID"], child))
                    ids.add(child)
                    if not item.get("isExcluded"):
                        parent = parent or c["CONCEPT_ID"]
            for item in excluded:
                if parent is not None:  # an exclusion under an included concept, as ATLAS sets are built
                    ancestors.add((parent, item["concept"]["CONCEPT_ID"]))
            set_ids[cs["id"]] = ids
        for domain, codesets in found["codesets"].items():
            for cs_id in codesets:
                pools[domain] |= set_ids.get(cs_id, set())
        found["codesets"] = defaultdict(set)
    concepts.update(found["concepts"])
    t = tables
    with engine.begin() as conn:
        have = set(conn.execute(select(t["concept"].c.concept_id)).scalars())
        rows = [{"concept_id": cid, "concept_name": str(c.get("CONCEPT_NAME") or "")[:255],
                 "domain_id": c.get("DOMAIN_ID") or "Observation", "vocabulary_id": c["VOCABULARY_ID"],
                 "concept_class_id": c.get("CONCEPT_CLASS_ID") or "Clinical Finding",
                 "standard_concept": c.get("STANDARD_CONCEPT") or None, "concept_code": str(c["CONCEPT_CODE"]),
                 "valid_start_date": dt.date(1970, 1, 1), "valid_end_date": dt.date(2099, 12, 31)}
                for cid, c in concepts.items() if cid not in have]
        _ensure_vocabularies(conn, {r["vocabulary_id"] for r in rows})
        _insert(conn, "concept", rows)
        _insert(conn, "concept_ancestor", [{"ancestor_concept_id": a, "descendant_concept_id": b,
                                            "min_levels_of_separation": 1, "max_levels_of_separation": 1}
                                           for a, b in sorted(ancestors)])
        for table, rows in _people(rnd, persons):
            _insert(conn, table, rows)
        for table, rows in _events(rnd, conn, pools, found).items():
            _insert(conn, table, rows)
    return export_csv(engine, folder, EXPORTED)


def _ensure_vocabularies(conn, names) -> None:
    v = tables["vocabulary"]
    have = set(conn.execute(select(v.c.vocabulary_id)).scalars())
    _insert(conn, "vocabulary", [{"vocabulary_id": n, "vocabulary_name": n, "vocabulary_concept_id": 0}
                                 for n in sorted(set(names) - have)])


def _insert(conn, table: str, rows: list[dict]) -> None:
    if rows:
        conn.execute(insert(tables[table]), rows)


PEOPLE: list = []


def _people(rnd, n):
    people, periods = [], []
    PEOPLE.clear()
    pid = 0
    for i in range(1, n + 1):
        year = rnd.randint(1935, 2005)
        people.append({"person_id": i, "gender_concept_id": rnd.choice([8507, 8532]), "year_of_birth": year,
                       "month_of_birth": rnd.randint(1, 12), "day_of_birth": rnd.randint(1, 28),
                       "race_concept_id": 0, "ethnicity_concept_id": 0})
        start = dt.date(2004, 1, 1) + dt.timedelta(days=rnd.randint(0, 2500))
        spans = []
        for _ in range(rnd.choice([1, 1, 2])):
            end = start + dt.timedelta(days=rnd.randint(200, 3000))
            pid += 1
            periods.append({"observation_period_id": pid, "person_id": i, "observation_period_start_date": start,
                            "observation_period_end_date": end, "period_type_concept_id": 0})
            spans.append((start, end))
            start = end + dt.timedelta(days=rnd.randint(30, 400))
        PEOPLE.append((i, spans))
    return ("person", people), ("observation_period", periods)


def _events(rnd, conn, pools, found) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    ids = defaultdict(int)

    def next_id(table):
        ids[table] += 1
        return ids[table]

    def day(spans):
        s, e = rnd.choice(spans)
        return s + dt.timedelta(days=rnd.randint(-120, (e - s).days + 60))

    specialties = sorted({c for v in found["ProviderSpecialty"].values() for c in v}) + [0]
    out["provider"] = [{"provider_id": i, "specialty_concept_id": rnd.choice(specialties)} for i in range(1, 21)]
    visit_types = {c for v in found["VisitType"].values() for c in v}
    visit_pool = sorted((pools.get("VisitOccurrence") or {9201, 9202, 9203}) | visit_types)
    visits_of: dict[int, list[tuple[int, dt.date]]] = defaultdict(list)
    for person, spans in PEOPLE:
        for _ in range(rnd.randint(2, 7)):
            start = day(spans)
            vid = next_id("visit_occurrence")
            out["visit_occurrence"].append({"visit_occurrence_id": vid, "person_id": person,
                                            "provider_id": rnd.randint(1, 20),
                                            "visit_concept_id": rnd.choice(visit_pool), "visit_start_date": start,
                                            "visit_end_date": start + dt.timedelta(days=rnd.choice([0, 0, 1, 3, 8])),
                                            "visit_type_concept_id": 0})
            visits_of[person].append((vid, start))
    numbers = {k: v for k, v in found["numbers"].items()}
    for domain, table in DOMAIN_TABLES.items():
        if domain == "VisitOccurrence":
            continue
        pool = sorted(pools.get(domain, set()))
        if not pool and domain not in ("Death", "DrugExposure", "ConditionOccurrence"):
            continue
        for person, spans in PEOPLE:
            if domain == "Death":
                if rnd.random() < 0.15:
                    out["death"].append({"person_id": person, "death_date": spans[-1][1] - dt.timedelta(days=rnd.randint(0, 30)),
                                         "death_type_concept_id": 0, "cause_concept_id": rnd.choice(pool or [0])})
                continue
            for _ in range(rnd.choice([0, 1, 2, 3, 4, 6])):
                concept = rnd.choice(pool) if pool and rnd.random() < 0.85 else 0
                start = day(spans)
                visit = None
                if visits_of[person] and rnd.random() < 0.5:
                    visit, start = rnd.choice(visits_of[person])
                row = _row(rnd, table, next_id(table), person, concept, start, visit, domain, found, numbers)
                if table not in ("drug_era", "condition_era", "specimen", "dose_era"):
                    row["provider_id"] = rnd.randint(1, 20)
                out[table].append(row)
    return out


def _row(rnd, table, rid, person, concept, start, visit, domain, found, numbers) -> dict:
    later = start + dt.timedelta(days=rnd.choice([0, 1, 5, 30, 120]))
    if table == "condition_occurrence":
        return {"condition_occurrence_id": rid, "person_id": person, "condition_concept_id": concept,
                "condition_start_date": start, "condition_end_date": later if rnd.random() < 0.6 else None,
                "condition_type_concept_id": 0, "visit_occurrence_id": visit,
                "condition_source_concept_id": concept if rnd.random() < 0.5 else 0}
    if table == "procedure_occurrence":
        return {"procedure_occurrence_id": rid, "person_id": person, "procedure_concept_id": concept,
                "procedure_date": start, "procedure_type_concept_id": 0, "visit_occurrence_id": visit,
                "procedure_source_concept_id": concept if rnd.random() < 0.5 else 0}
    if table == "drug_exposure":
        supply = rnd.choice([None, 7, 30, 90])
        return {"drug_exposure_id": rid, "person_id": person, "drug_concept_id": concept,
                "drug_exposure_start_date": start,
                "drug_exposure_end_date": later if rnd.random() < 0.4 or not supply else start + dt.timedelta(days=supply),
                "days_supply": supply,
                "drug_type_concept_id": 0, "visit_occurrence_id": visit,
                "drug_source_concept_id": concept if rnd.random() < 0.5 else 0}
    if table in ("measurement", "observation"):
        values = numbers.get(domain.replace("Occurrence", "")) or numbers.get(domain) or [50]
        centre = float(rnd.choice(values) or 1)
        value = None if rnd.random() < 0.15 else round(centre * rnd.uniform(0.3, 1.8), 2)
        row = {f"{table}_id": rid, "person_id": person, f"{table}_concept_id": concept, f"{table}_date": start,
               f"{table}_type_concept_id": 0, "value_as_number": value, "visit_occurrence_id": visit,
               f"{table}_source_concept_id": concept if rnd.random() < 0.5 else 0,
               "value_as_concept_id": rnd.choice(sorted(found["ValueAsConcept"].get(domain, set())) or [0]),
               "unit_concept_id": rnd.choice(sorted(found["Unit"].get(domain, set())) + [0])}
        if table == "measurement":
            row["range_low"] = rnd.choice([None, round(centre * 0.5, 2), 0])
            row["range_high"] = rnd.choice([None, round(centre * 1.2, 2)])
        return row
    if table in ("drug_era", "condition_era"):
        key = table.split("_")[0]
        return {f"{table}_id": rid, "person_id": person, f"{key}_concept_id": concept, f"{table}_start_date": start,
                f"{table}_end_date": later + dt.timedelta(days=rnd.randint(0, 200)),
                ("drug_exposure_count" if key == "drug" else "condition_occurrence_count"): rnd.randint(1, 6)}
    if table == "device_exposure":
        return {"device_exposure_id": rid, "person_id": person, "device_concept_id": concept,
                "device_exposure_start_date": start, "device_type_concept_id": 0, "visit_occurrence_id": visit}
    if table == "visit_detail":
        return {"visit_detail_id": rid, "person_id": person, "visit_detail_concept_id": concept,
                "visit_detail_start_date": start, "visit_detail_end_date": later, "visit_detail_type_concept_id": 0,
                "visit_detail_source_concept_id": concept if rnd.random() < 0.5 else 0,
                "visit_occurrence_id": visit or 0}
    if table == "dose_era":
        return {"dose_era_id": rid, "person_id": person, "drug_concept_id": concept, "unit_concept_id": 0,
                "dose_value": 1.0, "dose_era_start_date": start,
                "dose_era_end_date": later + dt.timedelta(days=rnd.randint(0, 90))}
    if table == "specimen":
        return {"specimen_id": rid, "person_id": person, "specimen_concept_id": concept, "specimen_date": start,
                "specimen_type_concept_id": 0}
    raise ValueError(table)
