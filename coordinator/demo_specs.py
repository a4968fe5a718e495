"""The federated specs ``radfed demo`` runs, written against the generator's ground truth codes.

Each is an ordinary researcher spec (the same YAML/JSON a researcher passes to ``radfed query run``).
"""

from __future__ import annotations


def specs(truth: dict) -> list[tuple[str, dict]]:
    refs = truth.get("query_references", {})
    features = refs.get("image_features", {})
    epen = refs.get("ependymoma_subtype", {"PFA": "RADFED:ependymoma_pfa", "PFB": "RADFED:ependymoma_pfb"})
    lipo = refs.get("liposarcoma_subtype", {"ALT": "ICDO3:8850/1", "myxoid": "ICDO3:8852/3"})
    subtypes = {**epen, **lipo}
    out: list[tuple[str, dict]] = []

    out.append(("count of ependymoma and liposarcoma patients by subtype", {
        "cohort": {"index": {"kind": "condition", "codes": list(subtypes.values())}},
        "variables": {"subtype": {"kind": "condition", "codes": subtypes}},
        "analysis": {"type": "crosstab", "by": ["subtype"]},
    }))
    out.append(("crosstab: liposarcoma fat fraction (binned) x MDM2 amplification", {
        "cohort": {"index": {"kind": "condition", "codes": list(lipo.values())}},
        "variables": {
            "fat_fraction": {"kind": "image_feature", "code": features.get("fat_fraction", "RADFED:fat_fraction"),
                             "reduce": "first"},
            "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"},
        },
        "analysis": {"type": "crosstab", "by": ["fat_fraction", "mdm2"],
                     "bins": {"fat_fraction": [0.0, 0.5, 0.75, 1.01]}},
    }))
    out.append(("summary: ADC mean in posterior fossa ependymoma", {
        "cohort": {"index": {"kind": "condition", "codes": list(epen.values())}},
        "variables": {"adc": {"kind": "image_feature", "code": features.get("adc_mean", "RADFED:adc_mean"),
                              "reduce": "first"},
                      "age": {"kind": "age"}},
        "analysis": {"type": "summary", "variables": ["adc", "age"]},
    }))
    out.append(("digital biopsy: ependymoma subtype (PFA vs PFB) by ADC mean, binned at 1050 um2/s", {
        "cohort": {"index": {"kind": "condition", "codes": list(epen.values())}},
        "variables": {
            "subtype": {"kind": "condition", "codes": epen},
            "adc": {"kind": "image_feature", "code": features.get("adc_mean", "RADFED:adc_mean"), "reduce": "first"},
        },
        "analysis": {"type": "crosstab", "by": ["subtype", "adc"], "bins": {"adc": [0, 1050, 5000]}},
    }))
    out.append(("Kaplan-Meier: overall survival in EGFR-mutant lung adenocarcinoma", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("lung_adenocarcinoma", "ICDO3:8140/3")]}},
        "analysis": {"type": "km", "time": {"start": "index", "event": {"kind": "death"},
                                            "censor": "observation_end"}, "bin_days": 90},
    }))
    out.append(("time-dependent Cox: death by latest ctDNA tumour fraction in EGFR-mutant lung cancer", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("lung_adenocarcinoma", "ICDO3:8140/3")]}},
        "variables": {"tf": {"kind": "measurement", "code": refs.get("ctdna_tumour_fraction", "RADFED:ctdna_tumour_fraction"),
                             "time_varying": True, "window": {"start": -3650}}},
        "analysis": {"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": ["tf"],
                     "time_varying": True, "mode": "stratified"},
    }))
    out.append(("exact pooled median of the first ctDNA tumour fraction in lung cancer (federated bisection)", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("lung_adenocarcinoma", "ICDO3:8140/3")]}},
        "variables": {"tf": {"kind": "measurement", "code": refs.get("ctdna_tumour_fraction", "RADFED:ctdna_tumour_fraction"),
                             "reduce": "first", "window": {"start": -3650}}},
        "analysis": {"type": "quantile", "variable": "tf", "probs": [0.5]},
    }))
    out.append(("concordance: CT progression vs detectable ctDNA in EGFR-mutant lung cancer (Bayesian bands)", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("lung_adenocarcinoma", "ICDO3:8140/3")]}},
        "variables": {
            "ct_progression": {"kind": "episode", "codes": [refs.get("disease_progression", "RADFED:progression")],
                               "window": {"start": 0}},
            "ctdna_detected": {"kind": "ctdna", "field": "detected", "reduce": "last", "window": {"start": 0}},
        },
        # test characteristics of RECIST progression on CT and of a plasma EGFR assay; prior 50:50
        "analysis": {"type": "concordance", "imaging": "ct_progression", "ctdna": "ctdna_detected",
                     "imaging_sens": 0.80, "imaging_spec": 0.85, "ctdna_sens": 0.75, "ctdna_spec": 0.95,
                     "prior": 0.5, "band": [0.2, 0.8]},
    }))
    out.append(("spatial biopsy validation: EGFR amplification by glioblastoma habitat, weighted for registration error", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("glioblastoma", "ICDO3:9440/3")]}},
        "analysis": {"type": "habitat", "gene": "EGFR", "variant_type": "cnv",
                     "habitats": ["low_cellularity", "hypercellular", "enhancing"]},
    }))
    return out
