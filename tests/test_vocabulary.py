"""The vocabulary layer: Athena loading, SYSTEM:code resolution, site-local concepts, site mappings."""

from pathlib import Path

import pytest
from sqlalchemy import func, select

from cdm.schema import tables
from cdm.vocabulary import (
    LOCAL_CONCEPT_MIN,
    AthenaError,
    UnknownCode,
    Vocabulary,
    load_athena,
    load_source_to_concept_map,
    parse_reference,
    vocabulary_for_uri,
)

ATHENA = Path(__file__).parent / "fixtures" / "athena"


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(tables[table])).scalar_one()


def test_load_athena_and_resolve(any_cdm):
    loaded = load_athena(any_cdm, ATHENA)
    assert loaded["concept"] == 8 and loaded["concept_relationship"] == 2 and loaded["concept_ancestor"] == 2
    vocab = Vocabulary(any_cdm)
    assert vocab.resolve("LOINC:2160-0") == 3016723
    assert vocab.resolve("loinc:8867-4") == 3027018  # system names are case-insensitive
    # A non-standard ICD10CM code resolves through "Maps to" to its standard SNOMED concept.
    assert vocab.resolve("ICD10CM:C71.6") == 4100001
    match = vocab.lookup("ICD10CM", "C71.6")
    assert (match.concept_id, match.source_concept_id, match.domain_id) == (4100001, 35206081, "Condition")
    assert vocab.resolve("HGNC:11998") == vocab.resolve("HGNC:HGNC:11998") == 35950001
    assert vocab.descendants(4112752) == {4112752, 4100001}
    # Project concepts survive an Athena load (it replaces only Athena's own rows).
    assert vocab.resolve("RADFED:adc_mean") == 2000000100
    # Loading again replaces rather than duplicates.
    load_athena(any_cdm, ATHENA)
    assert count(any_cdm, "concept_relationship") == 2


def test_unknown_code_gets_local_concept_and_keeps_source_value(any_cdm):
    vocab = Vocabulary(any_cdm)
    assert vocab.resolve("LOCALLAB:NA-SERUM") is None  # queries never create concepts
    match = vocab.concept_for("LOCALLAB", "NA-SERUM", name="Sodium, serum (site code)", domain_id="Measurement")
    assert match.is_local and match.concept_id >= LOCAL_CONCEPT_MIN
    assert match.concept_id == match.source_concept_id
    concept = tables["concept"]
    with any_cdm.connect() as conn:
        row = conn.execute(select(concept).where(concept.c.concept_id == match.concept_id)).mappings().one()
    assert (row["vocabulary_id"], row["concept_code"], row["concept_name"]) == (
        "LOCALLAB", "NA-SERUM", "Sodium, serum (site code)"
    )
    # Same code, new session (e.g. a rebuilt node): same id, no second row.
    again = Vocabulary(any_cdm).concept_for("LOCALLAB", "NA-SERUM")
    assert again.concept_id == match.concept_id
    assert Vocabulary(any_cdm).resolve("LOCALLAB:NA-SERUM") == match.concept_id
    with any_cdm.connect() as conn:
        assert conn.execute(
            select(func.count()).select_from(concept).where(concept.c.concept_code == "NA-SERUM")
        ).scalar_one() == 1


def test_site_mapping_file_maps_local_code_onto_standard(any_cdm, tmp_path):
    load_athena(any_cdm, ATHENA)
    mapping = tmp_path / "stcm.csv"
    mapping.write_text(
        "source_code,source_vocabulary_id,source_code_description,target\n"
        "CREA,LOCALLAB,Creatinine (site code),LOINC:2160-0\n"
    )
    assert load_source_to_concept_map(any_cdm, mapping).mappings == 1
    vocab = Vocabulary(any_cdm)
    match = vocab.concept_for("LOCALLAB", "CREA")
    assert match.concept_id == 3016723 and not match.is_local
    assert vocab.resolve("LOCALLAB:CREA") == vocab.resolve("LOINC:2160-0")


def test_mapping_targets_unknown_to_the_node_get_their_vocabularys_domain(any_cdm, tmp_path):
    # no Athena: LOINC:2160-0 is new to this node, so load-map creates it; as a LOINC code it is a
    # Measurement (else mapped lab results would land in `observation`), unless the file says otherwise
    mapping = tmp_path / "stcm.csv"
    mapping.write_text(
        "source_code,source_vocabulary_id,source_code_description,target,target_domain_id\n"
        "CREA,LOCALLAB,Creatinine (site code),LOINC:2160-0,\n"
        "SMOKE,LOCALQ,Smoker (site code),SNOMED:77176002,\n"
        "ECOG,LOCALQ,ECOG score,SNOMED:423740007,Measurement\n"
    )
    assert load_source_to_concept_map(any_cdm, mapping).mappings == 3
    vocab = Vocabulary(any_cdm)
    assert vocab.lookup("LOCALLAB", "CREA").domain_id == "Measurement"
    assert vocab.lookup("LOCALQ", "SMOKE").domain_id == "Observation"
    assert vocab.lookup("LOCALQ", "ECOG").domain_id == "Measurement"
    assert vocab.lookup("LOCALLAB", "CREA").concept_id == vocab.resolve("LOINC:2160-0")


def test_colliding_local_ids_are_probed(sqlite_cdm):
    from cdm.vocabulary import local_concept_id

    vocab = Vocabulary(sqlite_cdm)
    first = vocab.concept_for("V1", "a")
    # Pretend another code hashed to the same slot: the probe moves past it.
    assert local_concept_id("V1", "a", taken={first.concept_id}) != first.concept_id


@pytest.mark.parametrize("bad", ["", "nocolon", ":x", "1SYS:x", "SYS:", "A" * 30 + ":x", None, 42])
def test_malformed_reference(bad):
    with pytest.raises(UnknownCode):
        parse_reference(bad)


def test_fhir_system_uris():
    assert vocabulary_for_uri("http://loinc.org") == "LOINC"
    assert vocabulary_for_uri("http://snomed.info/sct/") == "SNOMED"
    assert vocabulary_for_uri("http://www.nlm.nih.gov/research/umls/rxnorm") == "RxNorm"
    local = vocabulary_for_uri("https://hospital.example/labcodes")
    assert local == vocabulary_for_uri("https://hospital.example/labcodes") and len(local) <= 20
    assert local != vocabulary_for_uri("https://other.example/labcodes")


def test_bad_athena_folder(tmp_path, sqlite_cdm):
    with pytest.raises(AthenaError, match="no CONCEPT.csv"):
        load_athena(sqlite_cdm, tmp_path)
    (tmp_path / "CONCEPT.csv").write_text("concept_id\tnot_a_column\n1\tx\n")
    with pytest.raises(AthenaError, match="not_a_column"):
        load_athena(sqlite_cdm, tmp_path)
    (tmp_path / "CONCEPT.csv").write_text(
        (ATHENA / "CONCEPT.csv").read_text().splitlines()[0] + "\n1\tshort row\n"
    )
    with pytest.raises(AthenaError, match="line 2"):
        load_athena(sqlite_cdm, tmp_path)
