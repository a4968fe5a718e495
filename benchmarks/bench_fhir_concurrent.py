"""Benchmark scaling FHIR ingest out: K ``radfed-node ingest fhir`` processes into one PostgreSQL CDM
against one process loading the same files (issue 23).

The synthetic export of ``bench_fhir.py`` (``--patients``, seed 1; or ``--folder``) is split line by
line into K parts (every K-th line of each NDJSON file: the worst case for cross-process references,
most resources' patients and practitioners are in another part).  Then, each into a fresh database
on the same server:

* **one process** loads all K parts (``radfed-node ingest fhir part-1 ... part-K``);
* **K processes** load one part each, started together.

Wall-clock seconds, resources/s, the CPU seconds of the ingest processes (their validation workers
included; the PostgreSQL server's own CPU is not), the load average before and after, and the row
count of every CDM table (equal in both databases, or the benchmark fails) go to
``benchmarks/results/fhir-concurrent-<patients>[-workers<N>].json``.  Run it under
``flock /tmp/radfed-bench.lock`` (other engineers benchmark on the same machine).

    flock /tmp/radfed-bench.lock .venv/bin/python benchmarks/bench_fhir_concurrent.py --patients 2000
    .venv/bin/python benchmarks/bench_fhir_concurrent.py --folder ../shared/fhir/synthea-bulk-10
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

from bench_fhir import PG_ADMIN, export_folder

BIN = Path(sys.executable).parent


def split(folder: Path, parts: int) -> list[Path]:
    """Every ``parts``-th line of each NDJSON file into ``parts`` folders (same file names)."""
    out = Path(tempfile.mkdtemp(prefix="radfed-bench-concurrent-"))
    folders = [out / f"part-{i + 1}" for i in range(parts)]
    for f in folders:
        f.mkdir()
    for path in sorted(folder.glob("*.ndjson")):
        if path.name == "log.ndjson":
            continue
        lines = path.read_bytes().splitlines(keepends=True)
        for i, f in enumerate(folders):
            (f / path.name).write_bytes(b"".join(lines[i::parts]))
    return folders


def fresh_database() -> tuple[str, str]:
    import psycopg

    from cdm.db import create_cdm, open_engine

    name = f"radfed_bench_concurrent_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    engine = open_engine(url)
    create_cdm(engine, source_name="bench")
    engine.dispose()
    return name, url


def drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table_counts(url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from cdm.db import open_engine
    from cdm.schema import tables

    engine = open_engine(url)
    with engine.connect() as conn:
        counts = {name: conn.execute(select(func.count()).select_from(t)).scalar_one() for name, t in sorted(tables.items())}
    engine.dispose()
    return {k: v for k, v in counts.items() if v}


def load(url: str, groups: list[list[Path]], workers: str | None) -> dict:
    """Start one ingest process per group at once; wall-clock and CPU seconds until all have ended."""
    extra = ["--workers", workers] if workers is not None else []
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = [subprocess.Popen([str(BIN / "radfed-node"), "--db", url, "ingest", "fhir", "--json", "--no-progress",
                                   *extra, *map(str, group)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for group in groups]
    outcomes = [(p.communicate(), p.returncode) for p in processes]
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summaries = []
    for (out, err), code in outcomes:
        if code not in (0, 3):
            raise SystemExit(f"ingest failed ({code}): {err.decode()[-2000:]}")
        summaries.append(json.loads(out))
    resources = sum(s["resources"] for s in summaries)
    return {"processes": len(groups), "resources": resources, "seconds": round(seconds, 1),
            "resources_per_s": round(resources / seconds),
            "ingest_cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
            "exit_codes": [code for _out, code in outcomes],
            "loaded": sum(s["loaded"] for s in summaries), "quarantined": sum(s["quarantined"] for s in summaries),
            "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--folder", type=Path, help="an existing NDJSON export instead of the synthetic one")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", help="--workers of every ingest process (default: radfed-node's own choice)")
    args = parser.parse_args()
    folder = args.folder or export_folder(args.patients)
    parts = split(folder, args.processes)
    runs, counts = [], []
    for groups in ([parts], [[p] for p in parts]):
        name, url = fresh_database()
        try:
            runs.append(load(url, groups, args.workers))
            counts.append(table_counts(url))
        finally:
            drop(name)
    if counts[0] != counts[1]:
        raise SystemExit(f"row counts differ: one process {counts[0]}, {args.processes} processes {counts[1]}")
    result = {"command": " ".join(sys.argv), "export": str(folder), "split": f"every {args.processes}th line",
              "runs": runs, "speed_up": round(runs[0]["seconds"] / runs[1]["seconds"], 2), "table_rows": counts[0]}
    label = (args.folder.name if args.folder else str(args.patients)) + \
        (f"-workers{args.workers}" if args.workers is not None else "")
    out = Path(__file__).parent / "results" / f"fhir-concurrent-{label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "table_rows"}, indent=2))


if __name__ == "__main__":
    main()
