"""Throw arbitrary structures and strings at the parser and compiler: nothing crashes unhandled and no
spec text reaches the SQL text."""

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from cdm.compiler import compile_spec
from cdm.spec import SpecError, loads_spec, parse_spec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
evil = st.text(min_size=6, max_size=30).filter(lambda s: s.strip() and ":" not in s)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_parser_never_crashes(data):
    try:
        parse_spec(data)
    except SpecError:
        pass
    try:
        loads_spec(json.dumps(data))
    except SpecError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evil, evil, evil)
def test_injected_text_never_in_sql(sqlite_cdm, gene, roi, hgvs):
    # A prefix no SQL keyword or identifier contains, so a hit is the spec's text and not, say, a
    # generated "target" matching the column variant_occurrence.target_gene1_symbol.
    gene, roi, hgvs = ("Qz9" + gene, "Qz8" + roi, "Qz7" + hgvs)
    spec = parse_spec({
        "cohort": {"index": {"kind": "condition", "codes": [f"SNOMED:{hgvs[:40]}"]},
                   "inclusion": [{"kind": "variant", "gene": gene[:60], "hgvs": hgvs}]},
        "variables": {"v": {"kind": "image_feature", "code": "RADFED:adc_mean", "roi": roi[:64]},
                      "c": {"kind": "condition", "codes": {roi[:64]: "SNOMED:1"}}},
        "analysis": {"type": "summary", "variables": ["v"]},
    })
    sql = str(compile_spec(spec, sqlite_cdm).query.compile(sqlite_cdm, compile_kwargs={"literal_binds": False}))
    for text in (gene[:60], roi[:64], hgvs):
        assert text[:6] not in sql
