"""The researcher guide's example specs (docs/examples/*.yaml): each parses with the spec language,
every analysis type has one, and the guide shows each of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdm.spec import ANALYSIS_TYPES, SpecError, load_spec, loads_spec

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_parses(path):
    spec = load_spec(path)
    assert spec.analysis.type in ANALYSIS_TYPES
    assert path.read_text().startswith("# "), f"{path.name}: say what the example asks in a first comment line"


def test_every_analysis_type_has_an_example_in_the_guide():
    types = {load_spec(path).analysis.type: path.name for path in EXAMPLES}
    assert set(ANALYSIS_TYPES) <= set(types), f"no example for {sorted(set(ANALYSIS_TYPES) - set(types))}"
    guide = (DOCS / "researcher-guide.md").read_text()
    assert all(f"examples/{name}" in guide for name in types.values()), "the guide must link every example"


def test_a_broken_example_would_fail():
    text = (DOCS / "examples" / "summary.yaml").read_text().replace("variables: [adc, age]", "variables: [adc, agee]")
    with pytest.raises(SpecError, match="unknown variable 'agee'"):
        loads_spec(text)
