"""A known-truth site for the adversarial tests (tests/test_adversarial_*.py, issue 16).

60 patients, every value known to the test: patient ``i`` (1..60) is indexed by a progression on
2020-01-01 + i days, is male when ``i`` is odd, has age ``AGE[i]`` (distinct ages), an ADC value
``ADC[i]`` and an SUVmax ``SUV[i]`` (both distinct), a PFA ependymoma when 3 | i, a PFB one when
i % 3 == 1, a response (0/1 outcome) when i % 4 < 2; patient ``TARGET`` alone has a malignant
transformation (the rare code).  For survival analyses (:func:`load_survival`) everyone is observed
until 2023-01-01 and patient ``i`` with ``i % 5 < 3`` dies ``DEATH_DAY[i]`` days after the index
date (distinct days).

The attacker is an ordinary researcher (or several, colluding) who sends requests through the
node's own execution path, :func:`node.execute.run_request`, on a real CDM.  The tests assert that a
protected value is *not determined* by everything the site released: over persons, the released
sums are rows of a 0/1 matrix, and a person's value is determined exactly when the person's unit
vector is in its row space (:func:`determined`).  Each test runs under the default node policy
and under the policy of deploy/examples/node.toml (:data:`POLICIES`).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from cdm.db import create_cdm, open_engine
from cdm.schema import tables
from node.audit import AuditLog
from node.disclosure import approvals
from node.execute import run_request
from node.state import state_engine
from tests.test_policy_attacks import write_config

D = dt.date
N = 60
IDS = np.arange(1, N + 1)
AGE = {i: 1 + (i * 37) % 61 for i in range(1, N + 1)}              # distinct ages
ADC = {i: 600.0 + 11.0 * ((i * 13) % 61) for i in range(1, N + 1)}  # distinct
SUV = {i: 2.0 + 0.1 * ((i * 7) % 61) for i in range(1, N + 1)}      # distinct
MALE = {i: bool(i % 2) for i in range(1, N + 1)}
SUBTYPE = {i: "PFA" if i % 3 == 0 else "PFB" if i % 3 == 1 else None for i in range(1, N + 1)}
RESPONSE = {i: 1.0 if i % 4 < 2 else 0.0 for i in range(1, N + 1)}
TARGET = 17
DEATH_DAY = {i: 40 + 9 * ((i * 11) % 61) for i in range(1, N + 1) if i % 5 < 3}  # distinct; TARGET dies
SURVIVAL = {"event": {"kind": "death"}}

INDEX = {"index": {"kind": "condition", "codes": ["RADFED:progression"]}}
VARIABLES = {
    "age": {"kind": "age"},
    "sex": {"kind": "sex"},
    "adc": {"kind": "measurement", "code": "RADFED:adc_mean"},
    "suv": {"kind": "measurement", "code": "RADFED:suv_max"},
    "rare": {"kind": "condition", "codes": ["RADFED:malignant_transformation"]},
    "pfa": {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]},
    "subtype": {"kind": "condition", "codes": {"PFA": "RADFED:ependymoma_pfa", "PFB": "RADFED:ependymoma_pfb"}},
    "response": {"kind": "condition", "codes": ["RADFED:response"]},
}
CONCEPT = {"progression": 2000000400, "adc": 2000000100, "suv": 2000000102, "rare": 2000000403,
           "PFA": 2000000700, "PFB": 2000000701, "response": 2000000402}


def load_site(engine) -> None:
    persons, conds, meas = [], [], []

    def condition(pid, concept, day):
        conds.append(dict(condition_occurrence_id=len(conds) + 1, person_id=pid, condition_concept_id=concept,
                          condition_start_date=day, condition_type_concept_id=0))

    for i in map(int, IDS):
        index_day = D(2020, 1, 1) + dt.timedelta(days=i)
        persons.append(dict(person_id=i, gender_concept_id=8507 if MALE[i] else 8532,
                            year_of_birth=2020 - AGE[i], month_of_birth=1, day_of_birth=1,
                            race_concept_id=0, ethnicity_concept_id=0))
        condition(i, CONCEPT["progression"], index_day)
        if SUBTYPE[i]:
            condition(i, CONCEPT[SUBTYPE[i]], D(2019, 6, 1))
        if RESPONSE[i]:
            condition(i, CONCEPT["response"], index_day + dt.timedelta(days=30))
        if i == TARGET:
            condition(i, CONCEPT["rare"], D(2019, 9, 1))
        for name in ("adc", "suv"):
            meas.append(dict(measurement_id=len(meas) + 1, person_id=i, measurement_concept_id=CONCEPT[name],
                             measurement_date=index_day, measurement_type_concept_id=0,
                             value_as_number=(ADC if name == "adc" else SUV)[i]))
    with engine.begin() as c:
        for t, rows in (("person", persons), ("condition_occurrence", conds), ("measurement", meas)):
            c.execute(insert(tables[t]), rows)


def load_survival(engine, death_day: dict | None = None) -> None:
    """Observation periods for everyone and the deaths of :data:`DEATH_DAY` (``death_day`` overrides
    some, None: alive at the end of follow-up -- a second world that differs only in a protected value)."""
    days = {i: day for i, day in {**DEATH_DAY, **(death_day or {})}.items() if day is not None}
    with engine.begin() as c:
        c.execute(insert(tables["observation_period"]), [
            dict(observation_period_id=int(i), person_id=int(i), observation_period_start_date=D(2010, 1, 1),
                 observation_period_end_date=D(2023, 1, 1), period_type_concept_id=0) for i in IDS])
        c.execute(insert(tables["death"]), [
            dict(person_id=i, death_date=D(2020, 1, 1) + dt.timedelta(days=i + day), death_type_concept_id=0)
            for i, day in days.items()])


HABITATS = ["habitat_hypercellular", "habitat_necrotic", "habitat_rare"]
RARE_BIOPSIES = 6  # the target's biopsies in habitat_rare: more than k rows, one person


def load_biopsies(engine, rare_positive: bool = True) -> None:
    """Two located biopsies per patient (hypercellular or necrotic; TP53 in some), and the target's
    :data:`RARE_BIOPSIES` biopsies in ``habitat_rare``, all carrying TP53 when ``rare_positive``."""
    rows = {"specimen": [], "biopsy_location": [], "variant_occurrence": []}

    def biopsy(sid, pid, habitat, distance, error, positive):
        rows["specimen"].append(dict(specimen_id=sid, person_id=pid, specimen_concept_id=0,
                                     specimen_type_concept_id=0, specimen_date=D(2020, 1, 1)))
        rows["biopsy_location"].append(dict(biopsy_location_id=sid, person_id=pid, specimen_id=sid, x_mm=0.0,
                                            y_mm=0.0, z_mm=float(sid % 100), registration_error_mm=error,
                                            habitat_label=habitat, distance_to_border_mm=distance))
        rows["variant_occurrence"].append(dict(variant_occurrence_id=sid, person_id=pid, specimen_id=sid,
                                               variant_date=D(2020, 1, 1), variant_type="snv", is_ctdna=False,
                                               target_gene1_symbol="TP53" if positive else "KRAS"))

    for i in map(int, IDS):
        for k in range(2):
            biopsy(100 * i + k, i, HABITATS[(i + k) % 2], 0.5 + (i + k) % 7, 1.0 + (i + k) % 3, (i * 7 + k) % 3 == 0)
    for k in range(RARE_BIOPSIES):
        biopsy(100 * TARGET + 10 + k, TARGET, HABITATS[2], 1.0 + k, 1.0, rare_positive)
    with engine.begin() as c:
        for table, values in rows.items():
            c.execute(insert(tables[table]), values)


def example_policy() -> str:
    """The [policy] and [policy.noise] tables of deploy/examples/node.toml, as written there."""
    text = (Path(__file__).resolve().parents[1] / "deploy" / "examples" / "node.toml").read_text()
    sections = re.split(r"(?m)^(?=\[)", text)
    return "".join(s for s in sections if s.startswith("[policy"))


POLICIES = {"default": "", "example": example_policy()}


def site_config(tmp_path, policy: str = "", name: str = "site-a"):
    """A real node.toml (own data folder: audit log, state) with ``policy`` appended."""
    return write_config(tmp_path, policy, name)


def world(folder: Path, policy: str, fill=None) -> tuple:
    """(CDM engine, node config) of a known-truth site in its own ``folder``; ``fill(engine)`` adds
    what makes this world differ from another (the protected value)."""
    config = site_config(folder, policy)
    engine = open_engine(folder / "cdm.sqlite")
    create_cdm(engine, source_name=folder.name)
    load_site(engine)
    if fill is not None:
        fill(engine)
    return engine, config


def view(r: dict) -> tuple:
    """What the researcher sees of a response, minus the request id."""
    return r["status"], r["code"], r["message"], r["result"]


def ask(engine, config, analysis, cohort=None, requester="mallory", variables=None, request_id="r",
        locked: bool = False, **fields) -> dict:
    """One request through the node's own path; ``locked`` as the bus handler sets it (rounds are
    algorithm-locked), ``fields``: request fields besides the spec (``lock``)."""
    return run_request(engine, config, {"request_id": request_id, "requester": requester, **fields,
                                        "spec": {"cohort": {**INDEX, **(cohort or {})},
                                                 "variables": variables or VARIABLES, "analysis": analysis}},
                       locked=locked)


def ask_approved(engine, config, analysis, *args, **kwargs) -> dict:
    """:func:`ask`, and where the site holds the request for a person (deploy/examples/node.toml
    approves model rounds by hand) the administrator approves it and the request is sent again."""
    r = ask(engine, config, analysis, *args, **kwargs)
    if r["code"] == "PENDING_APPROVAL":
        state_db = state_engine(config)
        approvals.decide(state_db, approvals.list_requests(state_db, "pending")[-1]["id"], "approved", None, "admin")
        r = ask(engine, config, analysis, *args, **kwargs)
    return r


def audit_entry(config, request_id: str) -> dict:
    """The site's last audit-log entry for ``request_id`` (what the node did, rows it read)."""
    return [e for e in AuditLog.for_config(config).entries() if e.get("request_id") == request_id][-1]


def age_range(lo=None, hi=None) -> dict:
    value = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    return {"kind": "age", **value}


def members(predicate) -> np.ndarray:
    """The 0/1 indicator over patients 1..N of those satisfying ``predicate(i)`` (the test's truth)."""
    return np.array([1.0 if predicate(int(i)) else 0.0 for i in IDS])


def determined(released: list[np.ndarray], target: np.ndarray) -> bool:
    """Whether the sum over ``target`` follows from the sums over ``released`` (rational row space)."""
    if not released:
        return False
    rows = np.array(released, dtype=float)
    return np.linalg.matrix_rank(np.vstack([rows, target])) == np.linalg.matrix_rank(rows)


def determined_persons(released: list[np.ndarray]) -> list[int]:
    """Every patient whose own value the released sums determine."""
    return [int(i) for j, i in enumerate(IDS) if determined(released, np.eye(N)[j])]
