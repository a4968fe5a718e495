"""The planted cohorts: one function per disease, each with its generating parameters.

Every parameter a test or demo may want to recover is in the module-level ``*_PARAMS`` dicts, which
:func:`effect_sizes` copies into ``ground_truth.json``.  The biology follows the literature the
issue cites (ependymoma molecular groups PFA/PFB; ALT/WDLPS vs myxoid liposarcoma; NF1 plexiform
neurofibroma -> MPNST; EGFR-mutant lung adenocarcinoma on osimertinib), but the numbers are
chosen to be clearly recoverable in a few hundred patients, not to be epidemiology.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from node import fhir_profile as fp
from node.synth import codes as C
from node.synth import geometry as G
from node.synth import rare
from node.synth import resources as R
from node.synth.context import CUTOFF, PatientContext

DAY = dt.timedelta(days=1)

EPENDYMOMA_PARAMS = {
    "PFA": {"share": 0.55, "age_median_years": 3.0, "age_log_sd": 0.45, "p_midline": 0.85,
            "adc_mean_um2_s": 850.0, "adc_sd": 90.0, "p_calcification": 0.20, "p_male": 0.6},
    "PFB": {"share": 0.45, "age_median_years": 30.0, "age_log_sd": 0.35, "p_midline": 0.20,
            "adc_mean_um2_s": 1250.0, "adc_sd": 110.0, "p_calcification": 0.60, "p_male": 0.5},
    "adc_min_ratio": 0.72,
    "adc_unit": "um2/s (10^-6 mm2/s)",
}
LIPOSARCOMA_PARAMS = {
    "ALT": {"share": 0.55, "fat_fraction": (0.85, 0.06), "septa_thickness_mm": (2.6, 0.5), "p_nonfatty_nodule": 0.05,
            "t2_signal_ratio": (1.3, 0.25), "enhancement_slope_pct_per_min": (0.6, 0.3), "p_mdm2_amp": 0.92,
            "mdm2_copy_number": (18.0, 6.0), "p_cdk4_amp": 0.80, "p_ddit3_fusion": 0.0},
    "myxoid": {"share": 0.45, "fat_fraction": (0.12, 0.06), "septa_thickness_mm": (0.9, 0.3), "p_nonfatty_nodule": 0.75,
               "t2_signal_ratio": (3.6, 0.5), "enhancement_slope_pct_per_min": (2.2, 0.5), "p_mdm2_amp": 0.03,
               "mdm2_copy_number": (6.0, 1.0), "p_cdk4_amp": 0.02, "p_ddit3_fusion": 0.95},
    "fusion": "FUS::DDIT3 (5' FUS)",
}
NF1_PARAMS = {
    "p_transform": 0.25,
    "visits": (3, 6), "visit_interval_days": (240, 420),
    "PN": {"suv_max": (1.9, 0.4), "necrosis_fraction": (0.02, 0.01), "p_target_sign": 0.85, "ctdna_tf": (0.002, 0.002),
           "volume_growth_per_year": 0.10},
    "MPNST": {"suv_max": (6.5, 1.5), "necrosis_fraction": (0.30, 0.10), "p_target_sign": 0.15, "ctdna_tf": (0.08, 0.04),
              "volume_growth_per_year": 1.5, "p_loss": {"CDKN2A": 0.80, "TP53": 0.45, "SUZ12": 0.60}},
    "ctdna_limit_of_detection": 0.005,
}
LUNG_PARAMS = {
    "visit_interval_days": 56,
    "max_follow_up_days": 1800,
    "baseline_tf_log_median": 0.08, "baseline_tf_log_sd": 0.6,
    "on_treatment_tf_factor": (0.05, 0.35),
    "resistance_time_mean_days": 420.0,
    "tf_doubling_days_after_resistance": 90.0,
    "p_discordant": 0.15,
    "max_tumour_fraction": 0.5,
    "ctdna_limit_of_detection": 0.005,
    "cox": {
        "covariate": "RADFED:ctdna_tumour_fraction, latest value (fraction 0-1) in force",
        "beta": 4.0,
        "baseline_hazard_per_day": 1.0 / 1400.0,
        "model": "h(t) = h0 * exp(beta * TF(t)), TF(t) = last measured ctDNA tumour fraction (piecewise constant "
                 "between draws); alive patients are censored at their last ctDNA draw",
    },
    "recist": {"progression": ">= +20% and >= 5 mm over nadir", "response": "<= -30% from baseline"},
    "driver_mix": {"L858R": 0.45, "ex19del": 0.55},
    "p_t790m_at_resistance": 0.5, "p_c797s_at_resistance": 0.3,
    "ldh_intercept_u_l": 180.0, "ldh_slope_per_tf": 500.0,
    "ldh": "baseline LDH (U/L) = 180 + 500 * baseline TF + N(0, 25); LOINC 2532-0 or the site's local code",
}
HABITAT_PARAMS = {
    "p_egfr_amp_by_true_habitat": {"habitat_hypercellular": 0.75, "habitat_enhancing": 0.60, "habitat_necrotic": 0.30,
                                   "habitat_oedema": 0.10, "habitat_low_cellularity": 0.15},
    "biopsies_per_patient": (2, 4),
    "geometry": {"shells_outer_fraction": {h: f for f, h in G.HABITAT_SHELLS}, "radius_mm": G.HABITAT_RADIUS_MM,
                 "centre_mm": [float(v) for v in G.CENTRE_MM], "note": "concentric shells; normal brain beyond the "
                 "oedema rim counts as oedema"},
    "registration": "true core position = written coordinates + N(0, registration_error_mm) per axis; "
                    "registration_error_mm = site error x U(0.8, 1.2)",
    "label_correct_probability_approx": "Phi(border distance / registration error)",
}
WEARABLE_PARAMS = {
    "cohort": "lung", "heart_rate_hz": 1, "heart_rate_seconds_per_session": 600,
    "heart_rate_mean_bpm": "68 + 40 * TF (ctDNA tumour fraction at that visit)", "heart_rate_sd_within": 4.0,
    "hr_intercept": 68.0, "hr_slope_per_tf": 40.0, "sessions": "baseline and the 2nd visit",
    "steps_period_seconds": 60, "steps_minutes_per_session": 60,
}
RARE_PARAMS = {
    "diseases": len(rare.DISEASES), "noise_rate": rare.NOISE_RATE, "system": C.SYNTH_DIAGNOSIS,
}


def effect_sizes() -> dict:
    return {"ependymoma": EPENDYMOMA_PARAMS, "liposarcoma": LIPOSARCOMA_PARAMS, "nf1": NF1_PARAMS,
            "lung": LUNG_PARAMS, "glioma_habitat": HABITAT_PARAMS, "wearables": WEARABLE_PARAMS,
            "rare": RARE_PARAMS}


def _normal(rng: np.random.Generator, mean_sd: tuple[float, float], lo: float = 0.0, hi: float = math.inf) -> float:
    return float(min(hi, max(lo, rng.normal(*mean_sd))))


def _feature(p: PatientContext, study: dict, series_uid: str, feature: str, value, unit: str, day: dt.date) -> None:
    p.emit(R.image_feature(p.id("Observation"), p.subject, study, series_uid, feature, value, unit, day, p.cb))


def _study(p: PatientContext, day: dt.date, series: list[dict], body_site: tuple, tag: str) -> tuple[dict, str]:
    """Write an ImagingStudy for ``series`` (each gets its uid here); returns (resource, study uid)."""
    study_uid = p.uid("study", tag)
    for n, s in enumerate(series, start=1):
        s["uid"] = p.uid("series", tag, n)
        s["number"] = n
    study = p.emit(R.imaging_study(p.id("ImagingStudy"), p.subject, study_uid, day, series, p.cb, body_site))
    return study, study_uid


def _tissue_variant_specimen(p: PatientContext, day: dt.date, body: tuple) -> tuple[dict, dict]:
    proc = p.emit(R.procedure(p.id("Procedure"), p.subject, C.BIOPSY, day, p.cb, body))
    spec = p.emit(R.specimen(p.id("Specimen"), p.subject, C.TISSUE_SPECIMEN, day, p.cb, proc))
    return proc, spec


# --------------------------------------------------------------------------------------------
def ependymoma(p: PatientContext) -> None:
    """Posterior fossa ependymoma: PFA (infants, midline, low ADC) vs PFB (young adults, lateral, calcified)."""
    P = EPENDYMOMA_PARAMS
    group = "PFA" if p.rng.random() < P["PFA"]["share"] else "PFB"
    g = P[group]
    day = p.diagnosis_date()
    age = float(np.exp(p.rng.normal(math.log(g["age_median_years"]), g["age_log_sd"])))
    p.person(p.sex_draw(g["p_male"]), p.birth_for_age(age, day))
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, day, p.cb))
    code = C.PFA if group == "PFA" else C.PFB
    p.emit(R.condition(p.id("Condition"), p.subject, [code, C.EPENDYMOMA], day, p.cb, enc, body_site=C.BODY_BRAIN))
    midline = bool(p.rng.random() < g["p_midline"])
    calcified = bool(p.rng.random() < g["p_calcification"])
    adc = _normal(p.rng, (g["adc_mean_um2_s"], g["adc_sd"]), 300.0)
    adc_min = adc * P["adc_min_ratio"] * float(p.rng.uniform(0.9, 1.1))
    volume = float(np.exp(p.rng.normal(math.log(30.0), 0.5)))  # cm3
    series = [{"modality": "MR", "description": "T2 TSE axial", "instances": 8, "kind": "t2"},
              {"modality": "MR", "description": "ADC", "instances": 8, "kind": "adc"},
              {"modality": "SEG", "description": "Lesion segmentation", "instances": 1, "kind": "seg"}]
    study, study_uid = _study(p, day, series, C.BODY_BRAIN, "dx")
    adc_uid = series[1]["uid"]
    _feature(p, study, adc_uid, "adc_mean", adc, "um2/s", day)
    _feature(p, study, adc_uid, "adc_min", adc_min, "um2/s", day)
    _feature(p, study, series[0]["uid"], "calcification", calcified, "", day)
    _feature(p, study, series[0]["uid"], "midline_location", midline, "", day)
    _feature(p, study, series[2]["uid"], "lesion_volume", volume, "cm3", day)
    p.labs(day)
    p.imaging({"cohort": "ependymoma", "study_uid": study_uid, "day": day, "series": series, "body": "BRAIN",
               "lesion": {"adc": adc, "midline": midline, "volume_cm3": volume, "calcified": calcified}})
    key = f"ependymoma/{group}"
    for f, v in (("n", 1), ("adc_sum", round(adc, 4)), ("adc_sq_sum", round(adc, 4) ** 2), ("calcified", calcified),
                 ("midline", midline), ("age_sum", age)):
        p.truth.add(key, f, v)
    p.record.update(cohort="ependymoma", subtype=group, adc_mean=round(adc, 4), calcification=calcified, midline=midline)


# --------------------------------------------------------------------------------------------
def liposarcoma(p: PatientContext) -> None:
    """Atypical lipomatous tumour (fatty, thick septa, MDM2/CDK4 amp) vs myxoid liposarcoma (FUS::DDIT3)."""
    P = LIPOSARCOMA_PARAMS
    group = "ALT" if p.rng.random() < P["ALT"]["share"] else "myxoid"
    g = P[group]
    day = p.diagnosis_date()
    age = float(p.rng.normal(58 if group == "ALT" else 42, 11))
    p.person(p.sex_draw(0.55), p.birth_for_age(max(age, 18), day))
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, day, p.cb))
    cond = p.emit(R.condition(p.id("Condition"), p.subject, [C.ALT if group == "ALT" else C.MYXOID_LPS], day, p.cb, enc,
                              body_site=C.BODY_THIGH))
    values = {
        "fat_fraction": (_normal(p.rng, g["fat_fraction"], 0.0, 1.0), "1"),
        "septa_thickness": (_normal(p.rng, g["septa_thickness_mm"], 0.2), "mm"),
        "nonfatty_nodule": (bool(p.rng.random() < g["p_nonfatty_nodule"]), ""),
        "t2_signal_ratio": (_normal(p.rng, g["t2_signal_ratio"], 0.3), "1"),
        "enhancement_slope": (_normal(p.rng, g["enhancement_slope_pct_per_min"], 0.0), "%/min"),
        "lesion_volume": (float(np.exp(p.rng.normal(math.log(350.0), 0.6))), "cm3"),
    }
    series = [{"modality": "MR", "description": "T1 axial (fat)", "instances": 8, "kind": "t1"},
              {"modality": "MR", "description": "T2 STIR axial", "instances": 8, "kind": "t2"},
              {"modality": "SEG", "description": "Tumour segmentation", "instances": 1, "kind": "seg"}]
    study, study_uid = _study(p, day, series, C.BODY_THIGH, "dx")
    for feature, (value, unit) in values.items():
        _feature(p, study, series[1]["uid"] if feature == "t2_signal_ratio" else series[0]["uid"], feature, value, unit, day)
    _, spec = _tissue_variant_specimen(p, day + 7 * DAY, C.BODY_THIGH)
    mdm2 = bool(p.rng.random() < g["p_mdm2_amp"])
    cdk4 = bool(p.rng.random() < g["p_cdk4_amp"])
    fusion = bool(p.rng.random() < g["p_ddit3_fusion"])
    vday = day + 14 * DAY
    if mdm2:
        cn = max(4.0, float(p.rng.normal(*g["mdm2_copy_number"])))
        p.emit(R.variant(p.id("Observation"), p.subject, spec, "MDM2", vday, p.cb, change=fp.SO_COPY_NUMBER_GAIN, copy_number=cn))
    if cdk4:
        cn = max(4.0, float(p.rng.normal(10.0, 3.0)))
        p.emit(R.variant(p.id("Observation"), p.subject, spec, "CDK4", vday, p.cb, change=fp.SO_COPY_NUMBER_GAIN, copy_number=cn))
    if fusion:
        p.emit(R.variant(p.id("Observation"), p.subject, spec, "DDIT3", vday, p.cb, change=fp.SO_GENE_FUSION, partner="FUS"))
    p.report(spec, vday, "Sarcoma NGS panel (MDM2, CDK4, DDIT3 fusions)")
    p.labs(day)
    p.imaging({"cohort": "liposarcoma", "study_uid": study_uid, "day": day, "series": series, "body": "THIGH",
               "lesion": {"fat_fraction": values["fat_fraction"][0], "t2_ratio": values["t2_signal_ratio"][0],
                          "volume_cm3": values["lesion_volume"][0]}})
    key = f"liposarcoma/{group}"
    for f, v in (("n", 1), ("mdm2_amp", mdm2), ("cdk4_amp", cdk4), ("ddit3_fusion", fusion),
                 ("fat_fraction_sum", values["fat_fraction"][0]), ("nonfatty_nodule", values["nonfatty_nodule"][0])):
        p.truth.add(key, f, v)
    p.record.update(cohort="liposarcoma", subtype=group, mdm2_amp=mdm2, ddit3_fusion=fusion, condition_id=cond["id"])


# --------------------------------------------------------------------------------------------
def nf1(p: PatientContext) -> None:
    """NF1 with a plexiform neurofibroma followed by serial MRI + PET and ctDNA; some transform to MPNST."""
    P = NF1_PARAMS
    day0 = p.diagnosis_date(dt.date(2016, 1, 1), dt.date(2020, 12, 31))
    age = float(p.rng.uniform(8, 35))
    p.person(p.sex_draw(), p.birth_for_age(age, day0))
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, day0, p.cb))
    p.emit(R.condition(p.id("Condition"), p.subject, [C.NF1_DISORDER], p.birth_for_age(age - 2, day0), p.cb, enc))
    pn = p.emit(R.condition(p.id("Condition"), p.subject, [C.PLEXIFORM_NF], day0, p.cb, enc, body_site=C.BODY_THIGH))
    n_visits = int(p.rng.integers(P["visits"][0], P["visits"][1] + 1))
    transforms = bool(p.rng.random() < P["p_transform"])
    transform_at = int(p.rng.integers(1, n_visits)) if transforms else None
    # Germline NF1 loss in everyone, from a blood draw at baseline (germline origin).
    blood = p.emit(R.specimen(p.id("Specimen"), p.subject, C.BLOOD_SPECIMEN, day0, p.cb))
    p.emit(R.variant(p.id("Observation"), p.subject, blood, "NF1", day0 + 14 * DAY, p.cb,
                     change=fp.SO_COPY_NUMBER_LOSS, copy_number=1, germline=True))
    p.report(blood, day0 + 14 * DAY, "Germline NF1 testing")
    volume = float(np.exp(p.rng.normal(math.log(120.0), 0.5)))
    day = day0
    mpnst_cond = None
    lost: list[str] = []
    for v in range(n_visits):
        if v:
            gap = int(p.rng.integers(*P["visit_interval_days"]))
            day = day + gap * DAY
            phase = "MPNST" if (transforms and v >= transform_at) else "PN"
            volume *= (1.0 + P[phase]["volume_growth_per_year"]) ** (gap / 365.25)
        malignant = transforms and v >= transform_at
        g = P["MPNST" if malignant else "PN"]
        if day > CUTOFF:
            break
        if malignant and mpnst_cond is None:
            mpnst_cond = p.emit(R.condition(p.id("Condition"), p.subject, [C.MPNST], day, p.cb, body_site=C.BODY_THIGH))
            _, tumour = _tissue_variant_specimen(p, day + 3 * DAY, C.BODY_THIGH)
            p.emit(R.variant(p.id("Observation"), p.subject, tumour, "NF1", day + 10 * DAY, p.cb,
                             change=fp.SO_COPY_NUMBER_LOSS, copy_number=0))
            for gene, prob in g["p_loss"].items():
                if p.rng.random() < prob:
                    lost.append(gene)
                    p.emit(R.variant(p.id("Observation"), p.subject, tumour, gene, day + 10 * DAY, p.cb,
                                     change=fp.SO_COPY_NUMBER_LOSS, copy_number=0))
            p.report(tumour, day + 10 * DAY, "Tumour NGS panel (MPNST)")
        suv = _normal(p.rng, g["suv_max"], 0.5)
        necrosis = _normal(p.rng, g["necrosis_fraction"], 0.0, 0.9)
        target = bool(p.rng.random() < g["p_target_sign"])
        series = [{"modality": "MR", "description": "T2 STIR coronal", "instances": 8, "kind": "t2"},
                  {"modality": "PT", "description": "FDG PET SUV", "instances": 8, "kind": "pet"},
                  {"modality": "SEG", "description": "Tumour segmentation", "instances": 1, "kind": "seg"}]
        study, study_uid = _study(p, day, series, C.BODY_THIGH, f"v{v}")
        _feature(p, study, series[1]["uid"], "suv_max", suv, "{SUV}", day)
        _feature(p, study, series[0]["uid"], "necrosis_fraction", necrosis, "1", day)
        _feature(p, study, series[0]["uid"], "target_sign", target, "", day)
        _feature(p, study, series[2]["uid"], "lesion_volume", volume, "cm3", day)
        status = "progression" if malignant else "stable"
        p.emit(R.disease_status(p.id("Observation"), p.subject, mpnst_cond or pn, status, day, p.cb, study))
        plasma = p.emit(R.specimen(p.id("Specimen"), p.subject, C.PLASMA, day, p.cb))
        tf = round(_normal(p.rng, g["ctdna_tf"], 0.0, 0.9), 4)
        p.emit(R.ctdna_fraction(p.id("Observation"), p.subject, plasma, tf, day, p.cb))
        p.emit(R.ctdna_detected(p.id("Observation"), p.subject, plasma, tf >= P["ctdna_limit_of_detection"], day, p.cb))
        for gene in lost if malignant and tf >= P["ctdna_limit_of_detection"] else []:
            p.emit(R.variant(p.id("Observation"), p.subject, plasma, gene, day, p.cb, change=fp.SO_COPY_NUMBER_LOSS,
                             copy_number=round(2 - 2 * tf, 3)))
        p.report(plasma, day, "ctDNA panel")
        if v in (0, transform_at, n_visits - 1):  # DICOM for baseline, transformation and last scan
            p.imaging({"cohort": "nf1", "study_uid": study_uid, "day": day, "series": series, "body": "THIGH", "visit": v,
                       "lesion": {"suv_max": suv, "necrosis": necrosis, "target_sign": target, "volume_cm3": volume}})
        key = f"nf1/{'MPNST' if malignant else 'PN'}"
        for f, val in (("scans", 1), ("suv_sum", suv), ("necrosis_sum", necrosis), ("target_sign", target),
                       ("ctdna_detected", tf >= P["ctdna_limit_of_detection"])):
            p.truth.add(key, f, val)
        if v == 0:
            p.labs(day)
    p.truth.add("nf1", "n")
    p.truth.add("nf1", "transformed", mpnst_cond is not None)
    for gene in lost:
        p.truth.add("nf1/MPNST", f"{gene}_loss")
    p.record.update(cohort="nf1", subtype="MPNST" if mpnst_cond is not None else "PN", transformed=mpnst_cond is not None,
                    transform_visit=transform_at if mpnst_cond is not None else None, losses=lost)


# --------------------------------------------------------------------------------------------
def lung(p: PatientContext) -> None:
    """EGFR-mutant lung adenocarcinoma on osimertinib: serial CT + ctDNA, time-varying survival hazard.

    The hazard between two ctDNA draws is ``h0 * exp(beta * TF)`` with TF the value *as written*
    (rounded) at the earlier draw, so a counting-process Cox fit on the files targets ``beta`` exactly.
    """
    P = LUNG_PARAMS
    rng = p.rng
    start = p.diagnosis_date(dt.date(2018, 1, 1), dt.date(2023, 6, 30))
    age = float(rng.normal(63, 9))
    sex = p.sex_draw(0.4)
    driver_name = "L858R" if rng.random() < P["driver_mix"]["L858R"] else "ex19del"
    driver = C.EGFR_L858R if driver_name == "L858R" else C.EGFR_EX19DEL
    discordant = bool(rng.random() < P["p_discordant"])
    tf0 = float(min(0.6, np.exp(rng.normal(math.log(P["baseline_tf_log_median"]), P["baseline_tf_log_sd"]))))
    nadir_factor = float(rng.uniform(*P["on_treatment_tf_factor"]))
    resistance = math.inf if discordant else float(rng.exponential(P["resistance_time_mean_days"]))
    growth = math.log(2) / P["tf_doubling_days_after_resistance"]
    sld0 = float(rng.uniform(30, 110))
    acquired = []
    if math.isfinite(resistance):
        if rng.random() < P["p_t790m_at_resistance"]:
            acquired.append(C.EGFR_T790M)
        if rng.random() < P["p_c797s_at_resistance"]:
            acquired.append(C.EGFR_C797S)
    end_day = min(P["max_follow_up_days"], (CUTOFF - start).days)
    interval = P["visit_interval_days"]
    beta, h0 = P["cox"]["beta"], P["cox"]["baseline_hazard_per_day"]
    discordant_visit = int(rng.integers(3, 7)) if discordant else None

    def latent_tf(t: float) -> float:
        response = tf0 * (nadir_factor + (1 - nadir_factor) * math.exp(-t / 20.0))
        if t > resistance:
            response = tf0 * nadir_factor * math.exp(growth * (t - resistance))
        return min(LUNG_PARAMS["max_tumour_fraction"], response)

    def latent_sld(t: float) -> float:
        shrink = 0.55 + 0.45 * math.exp(-t / 60.0)
        if t > resistance:
            shrink *= math.exp(growth / 3.0 * (t - resistance))  # volume ~ TF, diameter ~ cube root
        return sld0 * shrink

    # Simulate visits and death first: Patient.deceasedDateTime must be known when it is written.
    visits: list[tuple[int, float, float]] = []  # (day offset, TF as written, SLD mm)
    death: int | None = None
    t = 0
    while t <= end_day:
        tf = round(max(0.0, latent_tf(t) * float(np.exp(rng.normal(0, 0.15)))), 4)
        sld = latent_sld(t) * float(rng.normal(1.0, 0.03))
        if discordant and len(visits) >= discordant_visit:
            # Pseudo-progression: CT grows slightly (below RECIST progression) while ctDNA keeps falling.
            prev_tf, prev_sld = visits[-1][1], visits[-1][2]
            growth_factor = float(rng.uniform(1.06, 1.14)) if len(visits) == discordant_visit else float(rng.normal(1.0, 0.02))
            sld = prev_sld * growth_factor
            tf = round(prev_tf * float(rng.uniform(0.4, 0.7)), 4)
        visits.append((t, tf, sld))
        if t + interval > end_day:
            break
        wait = rng.exponential(1.0 / (h0 * math.exp(beta * tf)))
        if wait < interval:
            death = t + max(1, int(math.ceil(wait)))
            break
        t += interval
    discordant = discordant and len(visits) > discordant_visit
    deceased = start + death * DAY if death is not None else None
    p.person(sex, p.birth_for_age(age, start), deceased)
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, start, p.cb))
    cancer = p.emit(R.condition(p.id("Condition"), p.subject, [C.LUNG_ADENO], start - 21 * DAY, p.cb, enc, body_site=C.BODY_LUNG))
    p.emit(R.medication_statement(p.id("MedicationStatement"), p.subject, C.OSIMERTINIB, start, p.cb))
    _, tissue = _tissue_variant_specimen(p, start - 14 * DAY, C.BODY_LUNG)
    p.emit(R.variant(p.id("Observation"), p.subject, tissue, "EGFR", start - 7 * DAY, p.cb, change=driver[2],
                     hgvs_c=driver[0], hgvs_p=driver[1], vaf=round(float(rng.uniform(0.2, 0.6)), 3)))
    p.report(tissue, start - 7 * DAY, "Lung cancer NGS panel")
    p.labs(start)
    ldh = max(100.0, float(rng.normal(P["ldh_intercept_u_l"] + P["ldh_slope_per_tf"] * visits[0][1], 25.0)))
    p.lab("ldh", ldh, start)
    p.truth.add("lung/ldh", "n")
    p.truth.add("lung/ldh", "sum", round(ldh, 2))
    wearable = bool(rng.random() < p.site.wearable_rate)
    dev = p.emit(R.device(p.id("Device"), p.subject, p.cb, f"WR-{p.mrn}")) if wearable else None
    nadir = math.inf
    for k, (t, tf, sld) in enumerate(visits):
        day = start + t * DAY
        series = [{"modality": "CT", "description": "CT chest with contrast", "instances": 8, "kind": "ct"},
                  ({"modality": "SEG", "description": "Target lesions", "instances": 1, "kind": "seg"}
                   if p.site.lung_contours == "SEG" else
                   {"modality": "RTSTRUCT", "description": "Target lesions (RT structure set)", "instances": 1,
                    "kind": "rtstruct"})]
        study, study_uid = _study(p, day, series, C.BODY_LUNG, f"v{k}")
        longest = sld * float(rng.uniform(0.5, 0.7))
        _feature(p, study, series[0]["uid"], "sum_longest_diameters", sld, "mm", day)
        _feature(p, study, series[0]["uid"], "longest_diameter", longest, "mm", day)
        if k:
            if sld >= 1.2 * nadir and sld - nadir >= 5:
                status = "progression"
            elif sld <= 0.7 * visits[0][2]:
                status = "response"
            else:
                status = "stable"
            p.emit(R.disease_status(p.id("Observation"), p.subject, cancer, status, day, p.cb, study))
        nadir = min(nadir, sld)
        plasma = p.emit(R.specimen(p.id("Specimen"), p.subject, C.PLASMA, day, p.cb))
        detected = tf >= P["ctdna_limit_of_detection"]
        p.emit(R.ctdna_fraction(p.id("Observation"), p.subject, plasma, tf, day, p.cb))
        p.emit(R.ctdna_detected(p.id("Observation"), p.subject, plasma, detected, day, p.cb))
        if detected:
            p.emit(R.variant(p.id("Observation"), p.subject, plasma, "EGFR", day, p.cb, change=driver[2],
                             hgvs_c=driver[0], hgvs_p=driver[1], vaf=round(tf / 2, 4)))
            if t > resistance:
                for mut in acquired:
                    p.emit(R.variant(p.id("Observation"), p.subject, plasma, "EGFR", day, p.cb, change=mut[2],
                                     hgvs_c=mut[0], hgvs_p=mut[1], vaf=round(tf / 4, 4)))
        p.report(plasma, day, "ctDNA panel")
        if dev is not None and k in (0, 2):
            _wearable_session(p, dev, day, tf)
        if k in (0, len(visits) - 1) or (discordant and k == discordant_visit):
            p.imaging({"cohort": "lung", "study_uid": study_uid, "day": day, "series": series, "body": "CHEST", "visit": k,
                       "lesion": {"longest_diameter_mm": longest}})
    key = "lung"
    p.truth.add(key, "n")
    p.truth.add(key, "deaths", death is not None)
    p.truth.add(key, "discordant", discordant)
    p.truth.add(key, "ctdna_draws", len(visits))
    p.truth.add(key, "wearable", wearable)
    p.record.update(cohort="lung", subtype=driver_name, discordant=discordant,
                    discordant_visit=discordant_visit if discordant else None,
                    therapy_start=start.isoformat(), death_day=death, resistance_day=None if math.isinf(resistance) else round(resistance, 1),
                    wearable=wearable)


def _wearable_session(p: PatientContext, dev: dict, day: dt.date, tf: float) -> None:
    """10 minutes of 1 Hz heart rate and an hour of per-minute steps, on the morning of a visit."""
    W = WEARABLE_PARAMS
    start = dt.datetime.combine(day, dt.time(7, 30))
    mean = W["hr_intercept"] + W["hr_slope_per_tf"] * tf
    n = W["heart_rate_seconds_per_session"]
    # AR(1) noise: second-level heart rate is autocorrelated, not white.
    eps = p.rng.normal(0, W["heart_rate_sd_within"] * math.sqrt(1 - 0.9 ** 2), n)
    hr = np.empty(n)
    prev = 0.0
    for i in range(n):
        prev = 0.9 * prev + eps[i]
        hr[i] = mean + prev
    p.emit(R.sampled(p.id("Observation"), p.subject, dev, (fp.HEART_RATE, "Heart rate", "/min"), start, 1.0, hr, p.cb))
    steps = p.rng.poisson(30, W["steps_minutes_per_session"])
    p.emit(R.sampled(p.id("Observation"), p.subject, dev, (fp.STEP_COUNT, "Number of steps in unspecified time Pedometer", "{steps}"),
                     start, 60.0, steps, p.cb))
    p.truth.add("wearables", "sessions")
    p.truth.add("wearables", "hr_mean_sum", float(hr.mean()))
    p.truth.add("wearables", "tf_sum", tf)


# --------------------------------------------------------------------------------------------
def glioma_habitat(p: PatientContext) -> None:
    """Glioblastoma with an MR habitat map and 2-4 spatially mapped biopsies with per-core EGFR status.

    Each core's coordinates (as registered onto the habitat map, :mod:`node.synth.geometry`) fall
    in its *labelled* habitat; the core really came from those coordinates plus the registration
    error (N(0, sigma) per axis, sigma the site's 1-sigma error), so near a border its *true*
    habitat may differ.  EGFR amplification is drawn from the true habitat, so an analysis that
    weights each core by the probability its label is right recovers the per-habitat rates.
    """
    P = HABITAT_PARAMS
    day = p.diagnosis_date()
    p.person(p.sex_draw(0.6), p.birth_for_age(float(p.rng.normal(60, 10)), day))
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, day, p.cb))
    p.emit(R.condition(p.id("Condition"), p.subject, [C.GLIOBLASTOMA], day, p.cb, enc, body_site=C.BODY_BRAIN))
    series = [{"modality": "MR", "description": "T1 post-contrast 3D", "instances": 8, "kind": "t1c"},
              {"modality": "SEG", "description": "Habitat map", "instances": 1, "kind": "habitat"}]
    study, study_uid = _study(p, day, series, C.BODY_BRAIN, "dx")
    cores = []
    for b in range(int(p.rng.integers(P["biopsies_per_patient"][0], P["biopsies_per_patient"][1] + 1))):
        label = C.HABITATS[int(p.rng.integers(0, len(C.HABITATS)))]
        registered = G.sample_point_in(label, p.rng)
        sigma = round(p.site.registration_error_mm * float(p.rng.uniform(0.8, 1.2)), 2)
        true_habitat = G.habitat_at(registered + p.rng.normal(0, sigma, 3))
        border = G.border_distance_mm(registered)
        amplified = bool(p.rng.random() < P["p_egfr_amp_by_true_habitat"][true_habitat])
        xyz = [float(v) for v in registered]
        bday = day + 10 * DAY
        proc = p.emit(R.procedure(p.id("Procedure"), p.subject, C.BIOPSY, bday, p.cb, C.BODY_BRAIN))
        core = p.emit(R.specimen(p.id("Specimen"), p.subject, C.TISSUE_SPECIMEN, bday, p.cb, proc))
        p.emit(R.biopsy_location(p.id("Observation"), p.subject, proc, core, study, series[1]["uid"], xyz, sigma,
                                 label, border, bday, p.cb))
        if amplified:
            p.emit(R.variant(p.id("Observation"), p.subject, core, "EGFR", bday + 14 * DAY, p.cb,
                             change=fp.SO_COPY_NUMBER_GAIN, copy_number=round(float(p.rng.uniform(8, 40)), 1)))
        p.report(core, bday + 14 * DAY, "Glioma NGS panel (EGFR copy number)")
        p.truth.add(f"glioma_habitat/true/{true_habitat}", "cores")
        p.truth.add(f"glioma_habitat/true/{true_habitat}", "egfr_amp", amplified)
        p.truth.add(f"glioma_habitat/label/{label}", "cores")
        p.truth.add(f"glioma_habitat/label/{label}", "egfr_amp", amplified)
        p.truth.add("glioma_habitat", "label_wrong", label != true_habitat)
        cores.append({"specimen_id": core["id"], "label": label, "true": true_habitat, "egfr_amp": amplified,
                      "border_mm": round(border, 2)})
    p.labs(day)
    p.imaging({"cohort": "glioma_habitat", "study_uid": study_uid, "day": day, "series": series, "body": "BRAIN",
               "lesion": {"volume_cm3": 40.0}})
    p.truth.add("glioma_habitat", "n")
    p.record.update(cohort="glioma_habitat", cores=cores)


# --------------------------------------------------------------------------------------------
def rare_disease(p: PatientContext) -> None:
    """A rare-disease patient: the diagnosis (local code) plus HPO phenotypes sampled from its profile."""
    code, name, _, profile = rare.DISEASES[int(p.rng.integers(0, len(rare.DISEASES)))]
    day = p.diagnosis_date()
    p.person(p.sex_draw(), p.birth_for_age(float(p.rng.uniform(1, 45)), day))
    enc = p.emit(R.encounter(p.id("Encounter"), p.subject, day, p.cb))
    p.emit(R.condition(p.id("Condition"), p.subject, [(C.SYNTH_DIAGNOSIS, code, name)], day, p.cb, enc, text=name))
    present = [hp for hp, freq in profile if p.rng.random() < freq]
    if not present:  # a diagnosed patient shows at least the disease's most frequent feature
        present = [max(profile, key=lambda x: x[1])[0]]
    present += [hp for hp in rare.NOISE if hp not in present and p.rng.random() < rare.NOISE_RATE]
    for hp in present:
        p.emit(R.phenotype(p.id("Condition"), p.subject, (hp, rare.HP[hp]), day - int(p.rng.integers(30, 900)) * DAY, p.cb))
    p.labs(day)
    p.truth.add(f"rare/{code}", "n")
    p.record.update(cohort="rare", subtype=code, disease=name, phenotypes=present)


COHORT_FUNCTIONS = {
    "ependymoma": ependymoma,
    "liposarcoma": liposarcoma,
    "nf1": nf1,
    "lung": lung,
    "glioma_habitat": glioma_habitat,
    "rare": rare_disease,
}
