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
    out.append(("Kaplan-Meier round: time to progression in NF1 by malignant transformation", {
        "cohort": {"index": {"kind": "condition", "codes": [refs.get("plexiform_neurofibroma", "ICDO3:9550/0")]}},
        "variables": {"mpnst": {"kind": "condition", "codes": {"MPNST": refs.get("mpnst", "ICDO3:9540/3")}}},
        "analysis": {"type": "km_round", "time": {"start": "index", "event": {
            "kind": "episode", "code": refs.get("disease_progression", "RADFED:progression")},
            "censor": "observation_end"}, "group": "mpnst", "bin_days": 90},
    }))
    return out
