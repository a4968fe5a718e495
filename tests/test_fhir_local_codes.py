"""Local code systems by name, mappings loaded after the first ingest, and the mapping report (19.2, 19.3, 19.6).

The site-admin guide's own order — ingest, then ``vocab load-map``, then query — used to leave the
site-local concept made at first ingest shadowing the mapping: the mapped code matched a concept with
no rows and a count of 29 events was 0, silently.  Local systems were only reachable through a
hashed vocabulary name.  Made-up data shaped like the issue's: a local lab code system.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cdm.schema import tables
from cdm.spec import SpecError, parse_spec
from cdm.vocabulary import load_source_to_concept_map, vocabulary_for_uri
from node.cli import main
from node.execute import run_request
from node.ingest.engine import ingest_paths
from node.ingest.mapping_report import totals_by_role, unmapped_codes

LAB = "http://hospital.example/codes"
UNITS = "http://hospital.example/units"
PATIENTS = 29


def _export(folder):
    folder.mkdir()
    patients, observations = [], []
    for i in range(PATIENTS):
        patients.append({"resourceType": "Patient", "id": f"p{i}", "gender": "female", "birthDate": "1950-01-01"})
        # a local creatinine code with a local unit, and a local coded result (value) on a second code
        observations.append({"resourceType": "Observation", "id": f"k{i}", "status": "final",
                             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                                       "code": "laboratory"}]}],
                             "subject": {"reference": f"Patient/p{i}"}, "effectiveDateTime": "2022-05-01",
                             "code": {"coding": [{"system": LAB, "code": "K-12", "display": "Kreatinin"}]},
                             "valueQuantity": {"value": 0.8 + i / 100, "system": UNITS, "code": "mgdl"}})
        observations.append({"resourceType": "Observation", "id": f"s{i}", "status": "final",
                             "subject": {"reference": f"Patient/p{i}"}, "effectiveDateTime": "2022-05-01",
                             "code": {"coding": [{"system": LAB, "code": "SMOKE"}]},
                             "valueCodeableConcept": {"coding": [{"system": LAB, "code": "NEVER" if i % 2 else "PAST"}]}})
    (folder / "Patient.000.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    (folder / "Observation.000.ndjson").write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in observations))
    return folder


def _count(engine, cohort) -> int | None:
    response = run_request(engine, None, {"spec": {"cohort": cohort, "analysis": {"type": "count"}}})
    assert response["status"] == "ok", response
    return response["result"]["n"]


def _measurements(engine, concept_id) -> int:
    m = tables["measurement"]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(m.c.measurement_concept_id == concept_id)).scalar_one()


def test_local_codes_by_uri_and_alias_then_a_late_mapping_takes_effect(any_cdm, tmp_path):
    folder = _export(tmp_path / "export")
    summary = ingest_paths(any_cdm, [folder], workers=0)
    assert summary.total("loaded") == 3 * PATIENTS

    # 19.3: the local code system by its URI (FHIR token form) or a declared alias; never a hashed name
    by_uri = {"index": {"kind": "measurement", "code": f"{LAB}|K-12"}}
    assert _count(any_cdm, by_uri) == PATIENTS
    spec = {"code_systems": {"HOSPLAB": LAB},
            "cohort": {"index": {"kind": "measurement", "code": "HOSPLAB:K-12", "value": {"min": 0.9}}},
            "analysis": {"type": "count"}}
    response = run_request(any_cdm, None, {"spec": spec})
    assert response["status"] == "ok" and response["result"]["n"] == sum(1 for i in range(PATIENTS) if 0.8 + i / 100 >= 0.9)
    assert parse_spec(spec).cohort.index.code == f"{LAB}|K-12"
    with pytest.raises(SpecError, match="code system URI"):
        parse_spec({**spec, "code_systems": {"HOSPLAB": "not a uri"}})
    with pytest.raises(SpecError, match="standard vocabulary"):
        parse_spec({**spec, "code_systems": {"LOINC": LAB}})

    # 19.6: the report lists every unmapped coding by role, shown by URI, with the summary's total
    codes = unmapped_codes(any_cdm)
    assert sum(c.rows for c in codes) == sum(summary.unmapped.values()) == 4 * PATIENTS
    assert totals_by_role(codes) == {"concept": 2 * PATIENTS, "value": PATIENTS, "unit": PATIENTS}
    assert {c.code for c in codes} == {f"{LAB}|K-12", f"{LAB}|SMOKE", f"{LAB}|NEVER", f"{LAB}|PAST", f"{UNITS}|mgdl"}
    hashed = vocabulary_for_uri(LAB)
    assert not any(hashed in c.code for c in codes)

    # 19.2: the mapping arrives after the ingest: rows already loaded carry it at once, no --force
    before = run_request(any_cdm, None, {"spec": {"cohort": {"index": {"kind": "measurement", "code": "LOINC:2160-0"}}}})
    assert before["status"] == "refused" and before["code"] == "UNKNOWN_CODE"  # not yet known here
    mapping = tmp_path / "map.csv"
    # the map names the local codes as mapping-report shows them (or by system URI): no internal name
    mapping.write_text("source,source_code,source_vocabulary_id,target\n"
                       f"{LAB}|K-12,,,LOINC:2160-0\n,SMOKE,{LAB},LOINC:72166-2\n{LAB}|UNUSED,,,LOINC:1234-5\n")
    loaded = load_source_to_concept_map(any_cdm, mapping)
    assert loaded.mappings == 3 and loaded.rows_remapped == 2 * PATIENTS
    # smoking status was an observation; LOINC files it under Measurement: those rows must move tables
    assert loaded.rows_to_move == PATIENTS and "run `radfed-node ingest fhir`" in loaded.text()
    assert _count(any_cdm, {"index": {"kind": "measurement", "code": "LOINC:2160-0"}}) == PATIENTS
    assert _count(any_cdm, by_uri) == PATIENTS  # the local code still names the same rows
    result = CliRunner().invoke(main, ["--db", any_cdm.url.render_as_string(hide_password=False),
                                       "vocab", "resolve", "LOINC:2160-0", "LOINC:1234-5", f"{LAB}|NOPE"])
    lines = result.output.splitlines()
    assert lines[0].endswith(f"{PATIENTS} in measurement"), lines
    assert lines[1].endswith("code known here, 0 rows"), lines
    assert lines[2].endswith("unknown code: not in this node's vocabulary"), lines
    # the site's dry run of a spec says the same per code, apart from the (released) answer
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text('cohort: {index: {kind: measurement, code: "LOINC:2160-0"}, '
                         'inclusion: [{kind: measurement, code: "LOINC:1234-5"}, {kind: condition, codes: ["SNOMED:9"]}]}\n')
    dry = CliRunner().invoke(main, ["--db", any_cdm.url.render_as_string(hide_password=False), "query", str(spec_file)])
    assert "code LOINC:2160-0: concept" in dry.output and f"{PATIENTS} in measurement" in dry.output
    assert "code LOINC:1234-5: concept" in dry.output and "code known here, 0 rows" in dry.output
    assert "code SNOMED:9: unknown code" in dry.output
    assert totals_by_role(unmapped_codes(any_cdm)) == {"value": PATIENTS, "unit": PATIENTS}

    # the next ingest of the same files (no --force) re-maps the resources whose rows must move
    again = ingest_paths(any_cdm, [folder], workers=0)
    assert again.total("updated") == PATIENTS and again.total("unchanged") == 2 * PATIENTS
    assert _count(any_cdm, {"index": {"kind": "measurement", "code": "LOINC:72166-2"}}) == PATIENTS
    o = tables["observation"]
    with any_cdm.connect() as conn:
        assert conn.execute(select(func.count()).select_from(o)).scalar_one() == 0
    assert sum(c.rows for c in unmapped_codes(any_cdm)) == 2 * PATIENTS


def test_mapping_report_totals_equal_the_summary_on_synthea(sqlite_cdm, shared_dir):
    summary = ingest_paths(sqlite_cdm, [shared_dir / "fhir" / "synthea-bulk-10"], workers=0)
    codes = unmapped_codes(sqlite_cdm)
    assert sum(c.rows for c in codes) == sum(summary.unmapped.values()) > 0
    roles = totals_by_role(codes)
    assert {"concept", "visit type"} <= set(roles)
    by_table = Counter()
    for c in codes:
        by_table[c.table] += c.rows
    assert by_table["visit_occurrence"] > 0 and all(c.code.startswith(("SNOMED:", "RXNORM:", "CVX:", "LOINC:", "http", "urn"))
                                                    for c in codes), {c.code for c in codes}
