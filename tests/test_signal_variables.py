"""Wearable streams in query specs: ``signal`` criteria and variables over ``signal_window`` rows
(second-level samples summarised per window), the same on SQLite and PostgreSQL, checked against
the same numbers computed in Python from the rows inserted."""

import datetime as dt

import pytest
from sqlalchemy import insert

from cdm import spec as S
from cdm.compiler import Resolver
from cdm.round_frames import observations_query
from cdm.schema import tables
from cdm.vocabulary import Vocabulary
from node.execute import run_request

N = 30
INDEX = dt.date(2021, 6, 1)
HR = "LOINC:8867-4"
# (days from index, hour of day): each window starts at that time; two fall in the week before
# index, one on the index day itself, one after it
OFFSETS = [(-10, 8), (-6, 23), (-1, 0), (0, 12), (14, 7)]


def window_rows(i: int):
    """Person ``i``'s windows: (start, n, mean, sd, min, max)."""
    rows = []
    for k, (days, hour) in enumerate(OFFSETS):
        n = 60 * (1 + (i + k) % 4)                      # 60..240 samples
        mean = 60.0 + i + 7 * k + 0.25 * ((i * k) % 5)  # distinct per person and window
        start = dt.datetime.combine(INDEX + dt.timedelta(days=days), dt.time(hour, 30))
        rows.append((start, n, mean, 4.0 + k, mean - 10 - k, mean + 12 + (i % 3)))
    return rows


def load(engine):
    hr = Vocabulary(engine).concept_for("LOINC", "8867-4", "Heart rate", "Measurement").concept_id
    cond = Vocabulary(engine).concept_for("SNOMED", "254637007", "NSCLC", "Condition").concept_id
    persons, conditions, windows = [], [], []
    for i in range(1, N + 1):
        persons.append(dict(person_id=i, gender_concept_id=8507 if i % 2 else 8532, year_of_birth=1950 + i,
                            race_concept_id=0, ethnicity_concept_id=0))
        conditions.append(dict(condition_occurrence_id=i, person_id=i, condition_concept_id=cond,
                               condition_start_date=INDEX, condition_type_concept_id=0))
        for k, (start, n, mean, sd, lo, hi) in enumerate(window_rows(i)):
            windows.append(dict(signal_window_id=100 * i + k, person_id=i, signal_concept_id=hr,
                                window_start_datetime=start, window_seconds=600, n=n, mean=mean, sd=sd,
                                min=lo, max=hi))
    with engine.begin() as conn:
        for name, rows in (("person", persons), ("condition_occurrence", conditions), ("signal_window", windows)):
            conn.execute(insert(tables[name]), rows)


COHORT = {"index": {"kind": "condition", "codes": ["SNOMED:254637007"]}}
WEEK_BEFORE = {"start": -7, "end": 0}


def run(engine, analysis, variables=None, cohort=COHORT):
    spec = {"cohort": cohort, "variables": variables or {}, "analysis": analysis}
    answer = run_request(engine, None, {"request_id": "r", "requester": "t", "spec": spec})
    assert answer["status"] == "ok", answer
    assert answer["warnings"] == []
    return answer["result"]


def in_week_before(start: dt.datetime) -> bool:
    return -7 <= (start.date() - INDEX).days <= 0


def test_signal_variables_reduce_windows_as_documented(any_cdm):
    load(any_cdm)
    variables = {
        "hr": {"kind": "signal", "code": HR, "window": WEEK_BEFORE},                       # sample-weighted mean
        "hr_peak": {"kind": "signal", "code": HR, "stat": "max", "reduce": "max", "window": WEEK_BEFORE},
        "hr_windows": {"kind": "signal", "code": HR, "reduce": "count"},
        "hr_last": {"kind": "signal", "code": HR, "reduce": "last"},
    }
    result = run(any_cdm, {"type": "summary", "variables": list(variables)}, variables)["variables"]

    weighted, peak, last = [], [], []
    for i in range(1, N + 1):
        week = [w for w in window_rows(i) if in_week_before(w[0])]
        weighted.append(sum(n * m for _, n, m, *_ in week) / sum(n for _, n, *_ in week))
        peak.append(max(w[5] for w in week))
        last.append(max(window_rows(i))[2])  # the window that starts last
    assert result["hr"]["n"] == N
    assert result["hr"]["sum"] == pytest.approx(sum(weighted), rel=1e-12)
    assert result["hr"]["sum_sq"] == pytest.approx(sum(x * x for x in weighted), rel=1e-12)
    # an unweighted mean of the window means would differ: the weights matter in this data
    unweighted = sum(sum(w[2] for w in window_rows(i) if in_week_before(w[0])) / 3 for i in range(1, N + 1))
    assert abs(unweighted - sum(weighted)) > 1.0
    assert result["hr_peak"]["sum"] == pytest.approx(sum(peak), rel=1e-12)
    from_index = sum(1 for days, _ in OFFSETS if days >= 0)  # a variable's default window: from the index on
    assert result["hr_windows"] == {"n": N, "sum": float(N * from_index), "sum_sq": float(N * from_index ** 2)}
    assert result["hr_last"]["sum"] == pytest.approx(sum(last), rel=1e-12)


def test_signal_criterion_counts_windows_in_its_window(any_cdm):
    load(any_cdm)

    def expected(low, window, min_count):
        return sum(1 for i in range(1, N + 1)
                   if sum(1 for w in window_rows(i) if w[2] >= low and (window is None or in_week_before(w[0])))
                   >= min_count)

    for low, window, min_count in ((95.0, None, 1), (90.0, None, 3), (85.0, WEEK_BEFORE, 1), (95.0, WEEK_BEFORE, 2)):
        criterion = {"kind": "signal", "code": HR, "value": {"min": low}, "min_count": min_count}
        if window:
            criterion["window"] = window
        want = expected(low, window, min_count)
        assert 5 <= want < N  # neither everyone nor a suppressed cell: the criterion discriminates
        result = run(any_cdm, {"type": "count"}, cohort={**COHORT, "inclusion": [criterion]})
        assert result == {"n": want}, (low, window, min_count)


def test_a_time_varying_signal_steps_on_each_window_start_day(any_cdm):
    load(any_cdm)
    spec = S.parse_spec({"cohort": COHORT,
                         "variables": {"hr": {"kind": "signal", "code": HR, "time_varying": True}},
                         "analysis": {"type": "cox_round", "time": {"event": {"kind": "death"}}, "time_varying": True,
                                      "covariates": ["hr"], "beta": [0.0]}})
    with any_cdm.connect() as conn:
        rows = conn.execute(observations_query(spec, ["hr"], Resolver(any_cdm))).all()
    got = [(pid, day, round(value, 9)) for pid, day, _var, value in rows]
    # from the index on (the default window); a window's day is its start day, whatever the hour
    want = sorted((i, (w[0].date() - INDEX).days, round(w[2], 9)) for i in range(1, N + 1)
                  for w in window_rows(i) if w[0].date() >= INDEX)
    assert got == want


def test_a_bad_signal_spec_names_the_field():
    with pytest.raises(S.SpecError) as err:
        S.parse_spec({"cohort": COHORT, "variables": {"hr": {"kind": "signal", "code": HR, "stat": "median"}},
                      "analysis": {"type": "summary", "variables": ["hr"]}})
    assert "variables.hr" in str(err.value) and "stat" in str(err.value)
