"""A time-varying Cox covariate one patient has (issue 16, Cox rounds): counted in persons, not rows.

With ``time_varying`` covariates a Cox round's rows are counting-process intervals, several per
patient.  On the known-truth site (tests/adversarial.py) every patient has one measurement of a
flag, 0, on day 1; the target's flag then alternates 1, 0, 1, ... over ten measurements, so five of
the target's intervals carry 1 -- five rows on the rare side, which passed the row rule, but one
person, whose score and information entries for the flag are the target's own.  The round is
refused MIN_CELL naming persons, with the same answer in two worlds that differ only in the
target's death day; the same model without the flag is answered.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert

from cdm import spec as S
from cdm.round_frames import compile_intervals
from cdm.schema import tables
from cdm.vocabulary import Vocabulary
from tests.adversarial import (
    DEATH_DAY, IDS, INDEX, POLICIES, SURVIVAL, TARGET, VARIABLES, ask_approved, load_survival, view, world,
)

FLAG = {"kind": "measurement", "code": "RADFED:flag_tv", "time_varying": True}
VARS = {**VARIABLES, "flag": FLAG}
COX = {"type": "cox_round", "time": SURVIVAL, "mode": "stratified", "time_varying": True, "beta": [0.0, 0.0]}


def _flags(engine, death_day: int) -> None:
    load_survival(engine, {TARGET: death_day})
    concept = Vocabulary(engine).concept_for("RADFED", "flag_tv", "a time-varying flag", "Measurement").concept_id
    rows = []

    def measure(pid, day, value):
        rows.append(dict(measurement_id=100_000 + len(rows), person_id=pid, measurement_concept_id=concept,
                         measurement_date=dt.date(2020, 1, 1) + dt.timedelta(days=pid + day),
                         measurement_type_concept_id=0, value_as_number=value))

    for i in map(int, IDS):
        measure(i, 1, 0.0)
    for k in range(10):
        measure(TARGET, 2 + 2 * k, float(1 - k % 2))
    with engine.begin() as c:
        c.execute(insert(tables["measurement"]), rows)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_time_varying_flag_of_one_patient_is_refused(tmp_path, policy):
    views = []
    for name, day in (("truth", DEATH_DAY[TARGET]), ("other", DEATH_DAY[TARGET] + 200)):
        engine, config = world(tmp_path / name, POLICIES[policy], lambda engine, day=day: _flags(engine, day))
        r = ask_approved(engine, config, {**COX, "covariates": ["age", "flag"]}, variables=VARS,
                         request_id="flag", locked=True)
        assert (r["status"], r["code"], r["result"]) == ("refused", "MIN_CELL", None), r
        assert "'flag'" in r["message"] and "persons" in r["message"]
        views.append(view(r))
        # the rows the old rule counted: five intervals on the flag's rare side, all the target's
        spec = S.parse_spec({"cohort": INDEX, "variables": VARS, "analysis": {**COX, "covariates": ["age", "flag"]}})
        _, iv = compile_intervals(spec, spec.analysis.time, ["age", "flag"], engine)
        rare = iv.X[:, 1] == 1.0
        assert int(rare.sum()) >= 5 and set(iv.person_id[rare].tolist()) == {TARGET}
        ok = ask_approved(engine, config, {**COX, "covariates": ["age", "pfa"], "time_varying": False},
                          variables=VARS, request_id="common", locked=True)
        assert ok["status"] == "ok", ok
    assert views[0] == views[1]
