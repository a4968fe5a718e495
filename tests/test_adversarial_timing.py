"""Timing (issue 16, "Done means": timing): a refusal must not take a different time according to the
value it protects.

Family 2's oracle reads a one-patient cohort plus one condition: the count is 1 when the target has
the attribute and 0 when not, and both are refused with the same words ("fewer than k").  If the node
did more work for one than for the other -- it used to record a refused small cohort for the
site-wide auditor (a state-database write and commit) but skip a refused empty one -- the response
time would answer the question the words hide.  No timed assertion here (a loaded machine makes
them flaky): the test asserts the *work* is the same, structurally.  Every SQL statement the node
sends to its CDM and to its state database is recorded (SQLAlchemy's ``before_cursor_execute``
event on the real engines), and every named function of the node's disclosure steps that runs
(``sys.setprofile``); both must be identical for the two answers.  What is left differs only in the
size of numpy arrays (a zero or a one-person vector over the auditor's atoms: O(atoms) arithmetic,
microseconds against the milliseconds of the SQL both run).
"""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import event

from node.state import state_engine
from tests.adversarial import AGE, MALE, POLICIES, TARGET, age_range, ask, view, world

ONE_PERSON = [age_range(AGE[TARGET], AGE[TARGET])]  # only the target has this age
STEPS = ("node/execute.py", "node/disclosure/", "node/state.py", "node/audit.py")


def _work(engines, run) -> tuple[dict, list, set]:
    """(response, SQL statements sent to ``engines``, functions of the disclosure steps that ran)."""
    statements, functions = [], set()

    def on_statement(conn, cursor, statement, parameters, context, executemany):
        statements.append((str(conn.engine.url), statement))

    def on_call(frame, what, arg):
        if what == "call" and not frame.f_code.co_name.startswith("<") and \
                any(step in frame.f_code.co_filename for step in STEPS):  # named functions, not comprehensions
            functions.add((frame.f_code.co_filename.rsplit("/node/", 1)[-1], frame.f_code.co_name))

    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
    sys.setprofile(on_call)
    try:
        response = run()
    finally:
        sys.setprofile(None)
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)
    return response, statements, functions


@pytest.mark.parametrize("policy", POLICIES)
def test_a_refused_zero_does_the_same_work_as_a_refused_one(tmp_path, policy):
    """The target's sex asked both ways: one answer is a count of 1, the other of 0.  Same words, same
    SQL on the CDM and the state database (including the write that keeps the refused cohort for the
    auditor), same disclosure steps."""
    engine, config = world(tmp_path / "site", POLICIES[policy])
    engines = (engine, state_engine(config))
    has, lacks = ("M", "F") if MALE[TARGET] else ("F", "M")

    def probe(sex: str, request_id: str):
        cohort = {"inclusion": ONE_PERSON + [{"kind": "sex", "values": [sex]}]}
        return ask(engine, config, {"type": "count"}, cohort, requester="mallory", request_id=request_id)

    for sex in (has, lacks, has, lacks):  # warm the compiled-SQL and frame caches alike for both
        probe(sex, "warm")
    one, one_sql, one_steps = _work(engines, lambda: probe(has, "q"))
    zero, zero_sql, zero_steps = _work(engines, lambda: probe(lacks, "q"))
    assert view(one) == view(zero) and one["code"] == "MIN_CELL"
    assert one_sql == zero_sql
    assert any("INSERT INTO audited_release" in s for _, s in zero_sql)  # the refused zero is recorded too
    assert one_steps == zero_steps
    assert ("disclosure/release_history.py", "record_hidden") in zero_steps
