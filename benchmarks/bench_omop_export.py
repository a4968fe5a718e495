"""Benchmark ``ingest omop``: OHDSI's Eunomia export (294,202 rows, 39 CSV files in a zip) into a fresh
radfed CDM, then again (every row unchanged: compared, nothing written), against a bare parse of the
same CSV records (``csv.reader`` over every file) in the same run.

    .venv/bin/python benchmarks/bench_omop_export.py [--shared ../shared] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdm.db import create_cdm, drop_cdm, open_engine  # noqa: E402
from node.omop.export import ingest_export  # noqa: E402


def bare_parse(zip_path: Path) -> int:
    rows = 0
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if name.endswith(".csv") and not name.startswith("__MACOSX"):
                rows += sum(1 for _ in csv.reader(io.TextIOWrapper(archive.open(name), encoding="utf-8"))) - 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parent.parent.parent / "shared"))
    parser.add_argument("--pg", help="also load into this PostgreSQL database (its CDM tables are dropped)")
    args = parser.parse_args()
    zip_path = Path(args.shared) / "omop" / "eunomia" / "Synthea27Nj_5.4.zip"
    started = time.perf_counter()
    rows = bare_parse(zip_path)
    results = {"load_average_before": os.getloadavg()[0],
               "bare_parse": {"rows": rows, "seconds": round(time.perf_counter() - started, 2)}}
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite", str(Path(tmp) / "cdm.sqlite"))] + ([("postgresql", args.pg)] if args.pg else [])
        for backend, url in targets:
            engine = open_engine(url)
            if backend == "postgresql":
                drop_cdm(engine)
            create_cdm(engine)
            for run in ("first load", "re-run (unchanged)"):
                summary = ingest_export(engine, zip_path)
                results[f"{backend}, {run}"] = {"rows": summary.total(), "loaded": summary.total("loaded"),
                                                "unchanged": summary.total("unchanged"),
                                                "seconds": round(summary.seconds, 2),
                                                "rows_per_second": round(summary.total() / summary.seconds)}
            if backend == "postgresql":
                drop_cdm(engine)
            engine.dispose()
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
