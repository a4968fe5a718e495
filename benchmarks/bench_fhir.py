"""Benchmark the FHIR ingest: resources/s into SQLite and PostgreSQL next to the bare parse rate.

A FHIR-only synthetic Bulk Data export (``radfed-node synth --no-dicom``; 23,000 patients give
~1.14M resources, ~1 GB of NDJSON) is generated once under ``/tmp`` (never in the repository).  Then,
on the same machine in the same run:

* **bare parse**: ``orjson.loads`` over every line of every NDJSON file — the floor of any ingest;
* **SQLite** and **PostgreSQL**: ``ingest_paths`` into a fresh CDM, each in a fresh interpreter so
  its peak RSS is its own (streaming holds if the peak does not grow with the export);
* with ``--rerun``, a second load of the same export (everything unchanged: hash check only).

    .venv/bin/python benchmarks/bench_fhir.py                        # 23,000 patients, SQLite + PostgreSQL
    .venv/bin/python benchmarks/bench_fhir.py --patients 1000 --rerun
    RADFED_BENCH_PG=postgresql://postgres@127.0.0.1:5432/postgres    # the server to create a scratch DB on
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PG_ADMIN = os.environ.get("RADFED_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def export_folder(patients: int) -> Path:
    """The synthetic export for ``patients`` (generated on first use, then reused)."""
    from node.synth import SynthOptions, generate

    out = Path(tempfile.gettempdir()) / f"radfed-bench-fhir-{patients}"
    fhir = out / "site-1" / "fhir"
    if not (out / "ground_truth.json").exists():
        started = time.perf_counter()
        generate(out, SynthOptions(sites=1, patients=patients, seed=1, dicom=False))
        print(f"generated {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return fhir


def bare_parse(folder: Path) -> dict:
    import orjson

    lines = 0
    started = time.perf_counter()
    for path in sorted(folder.glob("*.ndjson")):
        if path.name == "log.ndjson":
            continue
        with open(path, "rb", buffering=1 << 20) as handle:
            for line in handle:
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    pass  # the planted truncated line: still read
                lines += 1
    seconds = time.perf_counter() - started
    return {"what": "bare parse (orjson)", "resources": lines, "seconds": round(seconds, 1),
            "resources_per_s": round(lines / seconds)}


def load_once(url: str, folder: str, runs: int) -> list[dict]:
    """In a fresh interpreter: create the CDM at ``url``, load ``folder`` ``runs`` times."""
    from cdm.db import create_cdm, open_engine
    from node.ingest.engine import ingest_paths

    engine = open_engine(url)
    create_cdm(engine, source_name="bench")
    out = []
    for _ in range(runs):
        summary = ingest_paths(engine, [folder])
        out.append({"resources": summary.total(), "loaded": summary.total("loaded"),
                    "unchanged": summary.total("unchanged"), "quarantined": summary.total("quarantined"),
                    "seconds": round(summary.seconds, 1), "resources_per_s": round(summary.resources_per_second),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    engine.dispose()
    return out


def _in_subprocess(url: str, folder: Path, runs: int) -> list[dict]:
    done = subprocess.run([sys.executable, __file__, "--one", url, str(folder), str(runs)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=23_000)
    parser.add_argument("--rerun", action="store_true", help="load twice (the second run is all unchanged)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(load_once(args.one[0], args.one[1], int(args.one[2]))))
        return
    folder = export_folder(args.patients)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    rows = [bare_parse(folder)]
    runs = 2 if args.rerun else 1
    with tempfile.TemporaryDirectory() as tmp:
        for n, r in enumerate(_in_subprocess(str(Path(tmp) / "cdm.sqlite"), folder, runs)):
            rows.append({"what": "SQLite" + (" (re-run)" if n else ""), **r})
    if not args.no_postgres:
        import psycopg
        from psycopg import sql

        name = f"radfed_bench_fhir_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
            for n, r in enumerate(_in_subprocess(url, folder, runs)):
                rows.append({"what": "PostgreSQL" + (" (re-run)" if n else ""), **r})
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    parse_rate = rows[0]["resources_per_s"]
    print(f"export: {args.patients:,} patients, {rows[0]['resources']:,} lines, {size_mb:,.0f} MB")
    print(f"| run | resources | seconds | resources/s | % of bare parse | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['resources']:,} | {r['seconds']} | {r['resources_per_s']:,} | "
              f"{100 * r['resources_per_s'] / parse_rate:.1f}% | {r.get('peak_rss_mb', '-')} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
