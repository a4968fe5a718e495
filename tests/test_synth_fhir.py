"""The synthetic generator's FHIR side: the files are a real Bulk Data export, every resource type
validates as FHIR R4 (R4B models), and the planted signals are recoverable from the files alone."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdm.db import create_cdm, open_engine
from cdm.vocabulary import Vocabulary, load_source_to_concept_map, vocabulary_for_uri
from node import fhir_profile as fp
from node.cli import main as node_cli
from node.synth import SynthOptions, generate

SEED = 11


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthOptions(sites=3, patients=420, seed=SEED, dicom=False))
    return out


@pytest.fixture(scope="module")
def truth(network) -> dict:
    return json.loads((network / "ground_truth.json").read_text())


def bad_ids(truth: dict) -> set[str]:
    return {b["resource_id"] for b in truth["bad_records"]}


def resources(network: Path, resource_type: str, skip: set[str] = frozenset()):
    """Every parsable resource of one type over all sites, as (site, resource); bad lines skipped."""
    for path in sorted(network.glob(f"site-*/fhir/{resource_type}.*.ndjson")):
        site = path.parts[-3]
        for line in path.read_text().splitlines():
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                continue
            if res.get("id") not in skip:
                yield site, res


def code_of(res: dict) -> tuple[str, str]:
    c = res["code"]["coding"][0]
    return c["system"], c["code"]


def value(res: dict):
    if "valueQuantity" in res:
        return res["valueQuantity"]["value"]
    if "valueBoolean" in res:
        return res["valueBoolean"]
    return res["valueCodeableConcept"]["coding"][0]["code"]


def category(res: dict) -> str | None:
    return res["category"][0]["coding"][0]["code"] if "category" in res else None


def subject(res: dict) -> str:
    return res["subject"]["reference"].split("/", 1)[1]


def features(network: Path, truth: dict, name: str) -> dict[str, list]:
    out = collections.defaultdict(list)
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, name):
            out[subject(obs)].append(value(obs))
    return out


def condition_groups(network: Path, truth: dict, codes: dict[tuple[str, str], str]) -> dict[str, str]:
    groups = {}
    for _, cond in resources(network, "Condition", bad_ids(truth)):
        for c in cond["code"]["coding"]:
            if (c["system"], c["code"]) in codes:
                groups[subject(cond)] = codes[(c["system"], c["code"])]
    return groups


# -- the export itself -------------------------------------------------------------------------------

def test_each_site_is_a_bulk_export_with_manifest_and_log(network, truth):
    assert [s["name"] for s in truth["sites"]] == ["site-1", "site-2", "site-3"]
    for site in truth["sites"]:
        folder = network / site["fhir_dir"]
        manifest = json.loads((folder / "manifest.json").read_text())
        listed = {Path(o["url"]).name: o for o in manifest["output"]}
        on_disk = {p.name for p in folder.glob("*.ndjson")} - {"log.ndjson"}
        assert set(listed) == on_disk
        for name, entry in listed.items():
            lines = (folder / name).read_text().splitlines()
            assert entry["count"] == len(lines)
            assert name.startswith(entry["type"] + ".")
        assert manifest["transactionTime"].endswith("Z") and manifest["error"] == []
        events = [json.loads(line)["eventId"] for line in (folder / "log.ndjson").read_text().splitlines()]
        assert events == ["kickoff", "status_complete", "manifest_complete", "export_complete"]
        # one resource type per file, as Bulk Data requires
        for name in on_disk:
            kinds = {json.loads(line)["resourceType"] for line in (folder / name).read_text().splitlines()
                     if line.startswith("{") and line.endswith("}")}
            assert kinds == {name.split(".")[0]}


def test_sites_differ_in_size_case_mix_and_lab_coding(truth):
    sizes = [s["patients"] for s in truth["sites"]]
    assert len(set(sizes)) == 3 and sum(sizes) == 420
    mixes = [tuple(sorted(s["patients_by_cohort"].items())) for s in truth["sites"]]
    assert len(set(mixes)) == 3
    assert truth["sites"][0]["labs_local"] == [] and truth["sites"][1]["labs_local"]
    assert len({s["vendor"] for s in truth["sites"]}) == 3


def test_every_resource_type_validates_as_fhir_r4(network, truth):
    skip = bad_ids(truth)
    seen = collections.Counter()
    for path in sorted(network.glob("site-*/fhir/*.ndjson")):
        if path.name == "log.ndjson":
            continue
        checked = 0
        for line in path.read_text().splitlines():
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                continue
            if res["id"] in skip:
                continue
            # every line of small files, a stride through the big Observation files
            if checked < 40 or checked % 25 == 0:
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                seen[res["resourceType"]] += 1
            checked += 1
    expected = {"Patient", "Encounter", "Condition", "Observation", "Specimen", "Procedure", "ImagingStudy",
                "MedicationStatement", "Device", "DiagnosticReport"}
    assert expected <= set(seen)
    for site in truth["sites"]:
        assert expected <= set(site["resources_by_type"])


def test_bad_records_are_where_ground_truth_says(network, truth):
    kinds = collections.Counter(b["kind"] for b in truth["bad_records"])
    assert kinds == {"malformed_json": 3, "invalid_resource": 3, "missing_patient_reference": 3}
    all_patients = {(site, p["id"]) for site, p in resources(network, "Patient")}
    for bad in truth["bad_records"]:
        line = (network / bad["file"]).read_text().splitlines()[bad["line"] - 1]
        if bad["kind"] == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            continue
        res = json.loads(line)
        assert res["id"] == bad["resource_id"]
        if bad["kind"] == "invalid_resource":
            with pytest.raises(Exception):
                get_fhir_model_class(res["resourceType"]).model_validate(res)
        else:
            get_fhir_model_class(res["resourceType"]).model_validate(res)
            assert res["subject"]["reference"] == bad["missing_reference"]
            assert (bad["site"], subject(res)) not in all_patients


def test_patients_carry_the_mrn_identifier(network, truth):
    n = 0
    for _, patient in resources(network, "Patient"):
        ident = patient["identifier"][0]
        assert ident["system"] == fp.DEFAULT_MRN_SYSTEM and ident["value"].isdigit()
        n += 1
    assert n == truth["patients"] == 420


def test_references_resolve_within_each_site(network, truth):
    skip = bad_ids(truth)
    ids = collections.defaultdict(set)
    for rtype in ("Patient", "ImagingStudy", "Condition", "Specimen", "Procedure", "Device"):
        for site, res in resources(network, rtype, skip):
            ids[site].add(f"{rtype}/{res['id']}")
    checked = 0
    for site, obs in resources(network, "Observation", skip):
        for ref in [obs["subject"]] + obs.get("derivedFrom", []) + obs.get("focus", []) + (
                [obs["specimen"]] if "specimen" in obs else []) + obs.get("partOf", []):
            assert ref["reference"] in ids[site]
            checked += 1
    assert checked > 5000


def test_image_features_name_a_series_of_their_imaging_study(network, truth):
    series = {}
    for _, study in resources(network, "ImagingStudy"):
        uids = {s["uid"] for s in study["series"]}
        assert study["identifier"][0]["value"].startswith("urn:oid:2.25.")
        assert all(len(u) <= 64 for u in uids)
        series[study["id"]] = uids
    n = 0
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if category(obs) == "imaging" and code_of(obs)[1] != fp.BIOPSY_LOCATION:
            study_id = obs["derivedFrom"][0]["reference"].split("/")[1]
            uid = next(c["valueString"] for c in obs["component"] if c["code"]["coding"][0]["code"] == fp.SERIES_INSTANCE_UID)
            assert uid in series[study_id]
            n += 1
    assert n > 1000


def test_codes_in_ground_truth_cover_the_files(network, truth):
    listed = {(c["system"], c["code"]) for c in truth["codes"]}
    for rtype in ("Observation", "Condition", "Specimen", "Procedure"):
        for _, res in resources(network, rtype, bad_ids(truth)):
            for c in res["code"]["coding"] if "code" in res else res["type"]["coding"]:
                assert (c["system"], c["code"]) in listed


# -- planted signals -----------------------------------------------------------------------------

def welch_z(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (b.mean() - a.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def test_ependymoma_pfa_has_lower_adc_and_less_calcification(network, truth):
    groups = condition_groups(network, truth, {(fp.RADFED, "ependymoma_pfa"): "PFA", (fp.RADFED, "ependymoma_pfb"): "PFB"})
    adc = features(network, truth, "adc_mean")
    calc = features(network, truth, "calcification")
    by = {g: [adc[p][0] for p, gg in groups.items() if gg == g] for g in ("PFA", "PFB")}
    assert len(by["PFA"]) >= 15 and len(by["PFB"]) >= 15
    assert welch_z(by["PFA"], by["PFB"]) > 4  # PFB higher, far beyond noise
    params = truth["effect_sizes"]["ependymoma"]
    for g in ("PFA", "PFB"):
        se = params[g]["adc_sd"] / math.sqrt(len(by[g]))
        assert abs(np.mean(by[g]) - params[g]["adc_mean_um2_s"]) < 4 * se
        realised = truth["realised"][f"ependymoma/{g}"]
        assert realised["n"] == len(by[g])
        assert math.isclose(realised["adc_sum"], sum(by[g]), rel_tol=1e-6)
    rate = {g: np.mean([calc[p][0] for p, gg in groups.items() if gg == g]) for g in ("PFA", "PFB")}
    assert rate["PFB"] > rate["PFA"]
    midline = features(network, truth, "midline_location")
    for g in ("PFA", "PFB"):
        n = len(by[g])
        for observed, expected in ((rate[g], params[g]["p_calcification"]),
                                   (np.mean([midline[p][0] for p, gg in groups.items() if gg == g]), params[g]["p_midline"])):
            assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_mdm2_amplification_in_alt_vs_myxoid_matches_ground_truth(network, truth):
    from node.synth.codes import ALT, MYXOID_LPS

    groups = condition_groups(network, truth, {ALT[:2]: "ALT", MYXOID_LPS[:2]: "myxoid"})
    amplified, fused = set(), set()
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.LOINC, fp.VARIANT_ASSESSMENT):
            genes = [c["valueCodeableConcept"]["coding"][0]["display"] for c in obs["component"]
                     if c["code"]["coding"][0]["code"] == fp.GENE_STUDIED]
            change = next(c["valueCodeableConcept"]["coding"][0]["code"] for c in obs["component"]
                          if c["code"]["coding"][0]["code"] == fp.DNA_CHANGE_TYPE)
            if genes == ["MDM2"] and change == fp.SO_COPY_NUMBER_GAIN:
                amplified.add(subject(obs))
            if genes == ["FUS", "DDIT3"] and change == fp.SO_GENE_FUSION:
                fused.add(subject(obs))
    params = truth["effect_sizes"]["liposarcoma"]
    for g in ("ALT", "myxoid"):
        members = [p for p, gg in groups.items() if gg == g]
        rate = sum(p in amplified for p in members) / len(members)
        expected = params[g]["p_mdm2_amp"]
        assert abs(rate - expected) < 4 * math.sqrt(max(expected * (1 - expected), 0.02) / len(members)) + 1 / len(members)
        assert truth["realised"][f"liposarcoma/{g}"]["mdm2_amp"] == sum(p in amplified for p in members)
    alt = [p for p, g in groups.items() if g == "ALT"]
    myx = [p for p, g in groups.items() if g == "myxoid"]
    assert np.mean([p in amplified for p in alt]) > np.mean([p in amplified for p in myx]) + 0.5
    assert np.mean([p in fused for p in myx]) > 0.8 and not any(p in fused for p in alt)


def test_mpnst_scans_have_higher_suvmax_than_plexiform_neurofibroma(network, truth):
    from node.synth.codes import MPNST

    onset = {}
    for _, cond in resources(network, "Condition", bad_ids(truth)):
        if code_of(cond) == MPNST[:2]:
            onset[subject(cond)] = cond["onsetDateTime"]
    assert onset, "some plexiform neurofibromas transform"
    suv = {"PN": [], "MPNST": []}
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, "suv_max"):
            p = subject(obs)
            phase = "MPNST" if p in onset and obs["effectiveDateTime"] >= onset[p] else "PN"
            suv[phase].append(value(obs))
    assert welch_z(suv["PN"], suv["MPNST"]) > 4


def test_ctdna_survival_hazard_is_recoverable_with_time_varying_cox(network, truth):
    from lifelines import CoxTimeVaryingFitter

    deaths = {p["id"]: p.get("deceasedDateTime") for _, p in resources(network, "Patient")}
    draws = collections.defaultdict(list)
    for site, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION):
            draws[(site, subject(obs))].append((obs["effectiveDateTime"], value(obs)))
    on_therapy = {(site, subject(m)) for site, m in resources(network, "MedicationStatement")}
    lung = {key: sorted(v) for key, v in draws.items() if key in on_therapy}
    assert len(lung) == truth["realised"]["lung"]["n"]
    rows = []
    for (site, pid), series in lung.items():
        origin = dt.date.fromisoformat(series[0][0])
        times = [(dt.date.fromisoformat(d) - origin).days for d, _ in series]
        death = deaths.get(pid)
        stop = (dt.date.fromisoformat(death) - origin).days if death else times[-1]
        for i, (t, tf) in enumerate(zip(times, [v for _, v in series])):
            end = times[i + 1] if i + 1 < len(times) else stop
            if end > t:
                rows.append({"id": f"{site}/{pid}", "start": t, "stop": end, "tf": tf,
                             "event": bool(death) and i == len(times) - 1})
    frame = pd.DataFrame(rows)
    assert frame["event"].sum() >= 30
    fit = CoxTimeVaryingFitter().fit(frame, id_col="id", event_col="event", start_col="start", stop_col="stop")
    beta_hat, se = fit.params_["tf"], fit.standard_errors_["tf"]
    beta = truth["effect_sizes"]["lung"]["cox"]["beta"]
    assert beta_hat / se > 3, "hazard rises with ctDNA tumour fraction"
    assert abs(beta_hat - beta) < 3.5 * se


def test_discordant_cases_grow_on_ct_while_ctdna_falls(network, truth):
    patients = [json.loads(line) for line in (network / truth["patients_file"]).read_text().splitlines()]
    discordant = [p for p in patients if p.get("discordant")]
    assert discordant
    sld = features(network, truth, "sum_longest_diameters")
    tfs = collections.defaultdict(list)
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION):
            tfs[subject(obs)].append((obs["effectiveDateTime"], value(obs)))
    for p in discordant:
        k = p["discordant_visit"]
        ct = sld[p["patient_id"]]
        tf = [v for _, v in sorted(tfs[p["patient_id"]])]
        assert 1.0 < ct[k] / ct[k - 1] < 1.2  # grows, but below RECIST progression
        assert tf[k] < tf[k - 1] or tf[k - 1] == 0


def test_habitat_labels_predict_egfr_amplification(network, truth):
    realised = truth["realised"]
    rate = {h: realised[f"glioma_habitat/label/{h}"]["egfr_amp"] / realised[f"glioma_habitat/label/{h}"]["cores"]
            for h in ("habitat_hypercellular", "habitat_oedema")}
    assert rate["habitat_hypercellular"] > rate["habitat_oedema"] + 0.3
    # and from the files: biopsy_location components, the core's EGFR status
    amp_specimens = set()
    locations = []
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.LOINC, fp.VARIANT_ASSESSMENT) and obs["specimen"]:
            amp_specimens.add(obs["specimen"]["reference"])
        if code_of(obs) == (fp.RADFED, fp.BIOPSY_LOCATION):
            comps = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
            assert comps[fp.REGISTRATION_ERROR]["valueQuantity"]["unit"] == "mm"
            locations.append((comps[fp.HABITAT_LABEL]["valueCodeableConcept"]["coding"][0]["code"], obs["specimen"]["reference"]))
    files_rate = {h: np.mean([s in amp_specimens for hh, s in locations if hh == h])
                  for h in ("habitat_hypercellular", "habitat_oedema")}
    assert files_rate == pytest.approx(rate)


def test_wearable_heart_rate_is_second_level_sampled_data(network, truth):
    hr = []
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.LOINC, fp.HEART_RATE):
            sd = obs["valueSampledData"]
            samples = [float(x) for x in sd["data"].split()]
            assert sd["period"] == 1000.0 and len(samples) == 600 and obs["device"]["reference"].startswith("Device/")
            hr.append(np.mean(samples))
    assert len(hr) == truth["realised"]["wearables"]["sessions"]
    assert np.mean(hr) == pytest.approx(truth["realised"]["wearables"]["hr_mean_sum"] / len(hr), rel=1e-3)


def test_rare_disease_patients_show_their_profile_phenotypes(network, truth):
    from node.synth.codes import HPO, SYNTH_DIAGNOSIS

    disease, phenos = {}, collections.defaultdict(set)
    for _, cond in resources(network, "Condition", bad_ids(truth)):
        system, code = code_of(cond)
        if system == SYNTH_DIAGNOSIS:
            disease[subject(cond)] = code
        elif system == HPO:
            phenos[subject(cond)].add(code)
    assert len(truth["rare_diseases"]) == 20 and all(d["description"] for d in truth["rare_diseases"])
    profiles = {d["code"]: {p["code"] for p in d["phenotypes"]} for d in truth["rare_diseases"]}
    in_profile = sum(len(phenos[p] & profiles[d]) for p, d in disease.items())
    outside = sum(len(phenos[p] - profiles[d]) for p, d in disease.items())
    assert in_profile > 4 * outside


def test_local_lab_codes_map_to_loinc_through_the_site_file(network, truth, tmp_path):
    site = truth["sites"][1]
    assert site["labs_local"]
    with open(network / site["vocabulary_map"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["source_vocabulary_id"] for r in rows} == {vocabulary_for_uri(site["lab_system"])}
    # labs in that site's export use the local system, never LOINC, for the mapped analytes
    local = collections.Counter()
    for s, obs in resources(network, "Observation", bad_ids(truth)):
        if s == site["name"] and category(obs) == "laboratory" and "valueQuantity" in obs:
            local[code_of(obs)[0]] += 1
    assert local[site["lab_system"]] > 0
    engine = open_engine(str(tmp_path / "cdm.sqlite"))
    create_cdm(engine, source_name=site["name"])
    assert load_source_to_concept_map(engine, network / site["vocabulary_map"]).mappings == len(rows)
    vocab = Vocabulary(engine)
    creat = next(r for r in rows if r["target"] == "LOINC:2160-0")
    match = vocab.lookup(creat["source_vocabulary_id"], creat["source_code"])
    assert match is not None and match.concept_id == vocab.resolve("LOINC:2160-0")


def test_same_seed_gives_byte_identical_output_and_another_seed_does_not(tmp_path):
    def snapshot(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    opts = dict(sites=2, patients=60, dicom=False)
    generate(tmp_path / "a", SynthOptions(seed=5, **opts))
    generate(tmp_path / "b", SynthOptions(seed=5, **opts))
    generate(tmp_path / "c", SynthOptions(seed=6, **opts))
    a, b, c = snapshot(tmp_path / "a"), snapshot(tmp_path / "b"), snapshot(tmp_path / "c")
    assert a == b
    assert a["site-1/fhir/Patient.000.ndjson"] != c["site-1/fhir/Patient.000.ndjson"]


def test_cli_writes_the_layout(tmp_path):
    out = tmp_path / "net"
    result = CliRunner().invoke(node_cli, ["synth", "--sites", "2", "--patients", "25", "--seed", "3", "--no-dicom", str(out)])
    assert result.exit_code == 0, result.output
    assert "site-2" in result.output
    for site in ("site-1", "site-2"):
        assert (out / site / "fhir" / "Patient.000.ndjson").exists()
        assert (out / site / "vocabulary" / "source_to_concept_map.csv").exists()
        assert not (out / site / "dicom").exists()
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["options"]["seed"] == 3 and truth["patients"] == 25


def test_query_references_parse_and_project_codes_exist(truth):
    from importlib import resources as res

    from cdm.vocabulary import parse_reference

    with res.files("cdm.data").joinpath("radfed_concepts.csv").open(encoding="utf-8") as f:
        radfed = {r["concept_code"] for r in csv.DictReader(f)}

    def leaves(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from leaves(v)
        elif ":" in node and " " not in node:
            yield node

    refs = list(leaves(truth["query_references"]))
    assert len(refs) > 40
    listed = {(c["system"], c["code"]) for c in truth["codes"]}
    for ref in refs:
        vocabulary_id, code = parse_reference(ref)
        if vocabulary_id == "RADFED":
            assert code in radfed
    assert (fp.RADFED, "ependymoma_pfa") in listed and ("http://terminology.hl7.org/CodeSystem/icd-o-3", "8850/1") in listed


def test_heart_rate_rises_with_ctdna_tumour_fraction_as_planted(network, truth):
    tf_on = {}
    for site, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION):
            tf_on[(site, subject(obs), obs["effectiveDateTime"])] = value(obs)
    pairs = []
    for site, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.LOINC, fp.HEART_RATE):
            day = obs["effectivePeriod"]["start"][:10]
            samples = np.array(obs["valueSampledData"]["data"].split(), float)
            pairs.append((tf_on[(site, subject(obs), day)], samples.mean()))
    tf, hr = np.array(pairs).T
    slope, intercept = np.polyfit(tf, hr, 1)
    params = truth["effect_sizes"]["wearables"]
    assert intercept == pytest.approx(params["hr_intercept"], abs=3)
    assert slope == pytest.approx(params["hr_slope_per_tf"], abs=20) and slope > 10


def test_fhir_output_does_not_depend_on_dicom_options(tmp_path):
    generate(tmp_path / "with", SynthOptions(sites=2, patients=12, seed=9, dicom=True, dicom_fraction=1.0))
    generate(tmp_path / "without", SynthOptions(sites=2, patients=12, seed=9, dicom=False))
    assert any((tmp_path / "with").rglob("*.dcm"))
    for path in sorted((tmp_path / "without").glob("site-*/fhir/*")):
        assert path.read_bytes() == (tmp_path / "with" / path.relative_to(tmp_path / "without")).read_bytes()


def test_large_exports_roll_over_into_numbered_files(tmp_path):
    generate(tmp_path, SynthOptions(sites=1, patients=40, seed=2, dicom=False, max_lines=500))
    folder = tmp_path / "site-1" / "fhir"
    manifest = json.loads((folder / "manifest.json").read_text())
    observation_files = [o for o in manifest["output"] if o["type"] == "Observation"]
    assert len(observation_files) > 1
    assert [Path(o["url"]).name for o in observation_files][:2] == ["Observation.000.ndjson", "Observation.001.ndjson"]
    assert all(o["count"] <= 500 for o in manifest["output"])
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert sum(o["count"] for o in manifest["output"]) == truth["resources"]


def test_cli_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path):
    (tmp_path / "site-1").mkdir()
    (tmp_path / "site-1" / "precious.txt").write_text("not ours")
    result = CliRunner().invoke(node_cli, ["synth", "--patients", "5", "--no-dicom", str(tmp_path)])
    assert result.exit_code != 0 and "empty folder" in result.output
    assert (tmp_path / "site-1" / "precious.txt").exists()
    out = tmp_path / "net"
    for patients in ("9", "6"):
        assert CliRunner().invoke(node_cli, ["synth", "--sites", "3", "--patients", patients, "--no-dicom", str(out)]).exit_code == 0
    assert sum(1 for _ in out.glob("site-*/fhir/Patient.000.ndjson")) == 3
    assert sum(len(p.read_text().splitlines()) for p in out.glob("site-*/fhir/Patient.000.ndjson")) == 6


def test_ctdna_is_detected_more_often_after_malignant_transformation(network, truth):
    from node.synth.codes import MPNST, PLEXIFORM_NF

    onset, nf1 = {}, set()
    for _, cond in resources(network, "Condition", bad_ids(truth)):
        if code_of(cond) == MPNST[:2]:
            onset[subject(cond)] = cond["onsetDateTime"]
        if code_of(cond) == PLEXIFORM_NF[:2]:
            nf1.add(subject(cond))
    detected = collections.defaultdict(list)
    for _, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs) == (fp.RADFED, fp.CTDNA_DETECTED) and subject(obs) in nf1:
            p = subject(obs)
            phase = "MPNST" if p in onset and obs["effectiveDateTime"] >= onset[p] else "PN"
            detected[phase].append(value(obs) == "LA11882-0")
    assert np.mean(detected["MPNST"]) > np.mean(detected["PN"]) + 0.4


def test_baseline_ldh_tracks_tumour_fraction_under_loinc_and_local_codes(network, truth):
    from node.synth.codes import LABS

    systems_by_site = {}
    ldh, tf0 = {}, {}
    for site, obs in resources(network, "Observation", bad_ids(truth)):
        system, code = code_of(obs)
        local = next((s for s in truth["sites"] if s["name"] == site and system == s["lab_system"]), None)
        if (system, code) == (fp.LOINC, LABS["ldh"][0]) or (local and code == "LDH-S"):
            ldh[(site, subject(obs))] = value(obs)
            systems_by_site.setdefault(site, set()).add(system)
        if code == fp.CTDNA_TUMOUR_FRACTION:
            key = (site, subject(obs))
            if key not in tf0 or obs["effectiveDateTime"] < tf0[key][0]:
                tf0[key] = (obs["effectiveDateTime"], value(obs))
    assert len(systems_by_site) == 3 and {fp.LOINC} in systems_by_site.values()
    assert any(fp.LOINC not in s for s in systems_by_site.values())
    x = np.array([tf0[k][1] for k in ldh])
    y = np.array([ldh[k] for k in ldh])
    slope, intercept = np.polyfit(x, y, 1)
    params = truth["effect_sizes"]["lung"]
    assert slope == pytest.approx(params["ldh_slope_per_tf"], rel=0.3)
    assert intercept == pytest.approx(params["ldh_intercept_u_l"], abs=20)


def test_output_is_identical_across_processes_with_different_hash_seeds(tmp_path):
    import os
    import subprocess
    import sys

    digests = []
    for hash_seed, name in (("1", "x"), ("987", "y")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([str(Path(sys.executable).parent / "radfed-node"), "synth", "--sites", "2", "--patients", "14", "--seed", "8",
                        "--dicom-fraction", "1.0", str(tmp_path / name)], check=True, env=env, capture_output=True)
        digests.append({str(p.relative_to(tmp_path / name)): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert digests[0] == digests[1] and any(k.endswith(".dcm") for k in digests[0])


def test_every_genomic_result_is_reported_once_in_a_diagnostic_report(network, truth):
    reported = collections.Counter()
    specimens_with_report = set()
    for site, rep in resources(network, "DiagnosticReport"):
        assert rep["code"]["coding"][0]["code"] == "81247-9"
        specimens_with_report.add((site, rep["specimen"][0]["reference"]))
        for r in rep.get("result", []):
            reported[(site, r["reference"])] += 1
        assert rep.get("result") or rep["conclusion"]
    genomic = 0
    for site, obs in resources(network, "Observation", bad_ids(truth)):
        if code_of(obs)[1] in (fp.VARIANT_ASSESSMENT, fp.CTDNA_TUMOUR_FRACTION, fp.CTDNA_DETECTED):
            assert reported[(site, f"Observation/{obs['id']}")] == 1
            assert (site, obs["specimen"]["reference"]) in specimens_with_report
            genomic += 1
    assert genomic == sum(reported.values()) > 500


def test_pfa_patients_are_young_children_and_pfb_young_adults(network, truth):
    birth = {p["id"]: dt.date.fromisoformat(p["birthDate"]) for _, p in resources(network, "Patient")}
    ages = collections.defaultdict(list)
    for _, cond in resources(network, "Condition", bad_ids(truth)):
        system, code = code_of(cond)
        if system == fp.RADFED and code.startswith("ependymoma_"):
            onset = dt.date.fromisoformat(cond["onsetDateTime"])
            ages[code[-3:].upper()].append((onset - birth[subject(cond)]).days / 365.25)
    params = truth["effect_sizes"]["ependymoma"]
    for g in ("PFA", "PFB"):
        assert np.median(ages[g]) == pytest.approx(params[g]["age_median_years"], rel=0.35)
    assert np.percentile(ages["PFA"], 90) < np.percentile(ages["PFB"], 10)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sites=st.integers(1, 4), extra=st.integers(0, 30), seed=st.integers(0, 2**31 - 1))
def test_any_network_is_self_consistent(tmp_path_factory, sites, extra, seed):
    """For any size and seed: manifests match the files, every reference but the planted one resolves."""
    out = tmp_path_factory.mktemp("prop")
    truth = generate(out, SynthOptions(sites=sites, patients=sites + extra, seed=seed, dicom=False))
    assert sum(s["patients"] for s in truth["sites"]) == sites + extra == truth["patients"]
    planted = {b["resource_id"] for b in truth["bad_records"]}
    for site in truth["sites"]:
        folder = out / site["fhir_dir"]
        manifest = json.loads((folder / "manifest.json").read_text())
        ids, refs = set(), []
        for entry in manifest["output"]:
            lines = (folder / Path(entry["url"]).name).read_text().splitlines()
            assert len(lines) == entry["count"]
            for line in lines:
                try:
                    res = json.loads(line)
                except json.JSONDecodeError:
                    continue
                ids.add(f"{res['resourceType']}/{res['id']}")
                if res["id"] not in planted:
                    refs += [v["reference"] for k, v in res.items() if isinstance(v, dict) and "reference" in v]
        assert refs and all(r in ids for r in refs)
        assert sum(1 for b in truth["bad_records"] if b["site"] == site["name"]) == 3
