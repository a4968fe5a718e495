"""What the generator planted, written next to the data so tests and demos can check recovery.

``ground_truth.json`` holds the generating parameters (effect sizes), the realised counts and sums
per site and cohort (running totals: constant memory), every code used, the deliberately bad
records and where they are.  Per-patient labels (cohort, subtype, disease, discordance, transformation)
stream to ``ground_truth_patients.ndjson`` one line per patient, so a million-resource build never
holds them in memory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson


class GroundTruth:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.params: dict = {}
        self.stats: dict = defaultdict(lambda: defaultdict(float))
        self.bad_records: list[dict] = []
        self.sites: list[dict] = []
        self._patients = open(self.out / "ground_truth_patients.ndjson", "wb")
        self.patient_count = 0

    def add(self, key: str, field: str, amount: float = 1.0) -> None:
        """Accumulate a realised statistic, e.g. add("ependymoma/PFA", "adc_mean_sum", 812.0)."""
        self.stats[key][field] += float(amount)

    def patient(self, record: dict) -> None:
        self._patients.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.patient_count += 1

    def bad(self, **record) -> None:
        self.bad_records.append(record)

    def close(self, **extra) -> dict:
        self._patients.close()
        doc = {
            **extra,
            "patients_file": "ground_truth_patients.ndjson",
            "patients": self.patient_count,
            "sites": self.sites,
            "effect_sizes": self.params,
            "realised": {k: {f: round(v, 6) for f, v in sorted(d.items())} for k, d in sorted(self.stats.items())},
            "bad_records": self.bad_records,
        }
        (self.out / "ground_truth.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        return doc
