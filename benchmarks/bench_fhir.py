"""Benchmark the FHIR ingest: resources/s into SQLite and PostgreSQL next to the bare parse rate.

A FHIR-only synthetic Bulk Data export (``radfed-node synth --no-dicom``; 23,000 patients give
~1.06M resources, ~0.9 GB of NDJSON) is generated once under ``/tmp`` (never in the repository).  Then,
on the same machine in the same run:

* **bare parse**: ``orjson.loads`` over every line of every NDJSON file — the floor of any ingest;
* **hash and skip**: the parse plus the content hash of each resource — what a re-run of unchanged
  files must at least do (its floor: the look-up of the stored hashes comes on top);
* **validator alone**: ``node.ingest.validate.problem`` on every resource in this process (the fast
  check compiled from the fhir.resources models, fhir.resources itself where it is not sure), and
  **fhir.resources alone** (``model_problem``) on the same resources for comparison;
* **SQLite** and **PostgreSQL**: ``ingest_paths`` into a fresh CDM, each in a fresh interpreter so
  its peak RSS is its own (streaming holds if the peak does not grow with the export);
* then a second load of the same export into the same CDM (everything unchanged: hash check only;
  ``--no-rerun`` skips it).

Parsing, validation and mapping run in ``auto_workers`` processes (one per core) unless ``--workers``
says otherwise (``--workers 1,2``: a load, and its re-run, with each); the loader's and the workers'
CPU time per resource and peak RSS are reported apart (the per-stage costs a core count is projected
from: benchmarks/README.md).  The figures,
the machine's load average before and after, and the command go to ``benchmarks/results/fhir.json``.
Other engineers benchmark on the same machine: run it under ``flock /tmp/radfed-bench.lock``.

    flock /tmp/radfed-bench.lock .venv/bin/python benchmarks/bench_fhir.py   # 23,000 patients, SQLite + PostgreSQL
    .venv/bin/python benchmarks/bench_fhir.py --folder ../shared/fhir/synthea-bulk-10   # the real Synthea export
    .venv/bin/python benchmarks/bench_fhir.py --patients 2000 --no-postgres --workers 0
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


def _lines(folder: Path):
    for path in sorted(folder.glob("*.ndjson")):
        if path.name != "log.ndjson":
            with open(path, "rb", buffering=1 << 20) as handle:
                yield from handle


def _parsed(folder: Path) -> list[dict]:
    import orjson

    out = []
    for line in _lines(folder):
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            out.append(resource)
    return out


def hash_and_skip(folder: Path) -> dict:
    import orjson

    from node.ingest.engine import content_hash

    lines = 0
    started = time.perf_counter()
    for line in _lines(folder):
        try:
            content_hash(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
        lines += 1
    seconds = time.perf_counter() - started
    return {"what": "hash and skip (parse + content hash)", "resources": lines, "seconds": round(seconds, 1),
            "resources_per_s": round(lines / seconds)}


def validators(folder: Path, reference: int) -> list[dict]:
    """``problem`` (the ingest's validator) over every resource and fhir.resources alone over an even
    sample of ``reference`` of them, in this process, after a warm-up; parsing is not timed, and the
    export is streamed (a 1M-resource export parsed at once does not fit in memory)."""
    import gc

    import orjson

    from node.ingest.validate import INVALID_RESOURCE, model_problem, problem

    total = sum(1 for _ in _lines(folder))
    step = max(1, total // reference) if reference else 0
    gc.freeze()
    rows = []
    for what, check, every in [("validator alone (node.ingest.validate.problem)", problem, 1),
                               ("fhir.resources alone (model_problem)", model_problem, step)][:2 if reference else 1]:
        load = os.getloadavg()[0]
        seconds, checked, found = 0.0, 0, 0
        for n, line in enumerate(_lines(folder)):
            if n % every:
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                continue
            if check is model_problem and not (isinstance(resource.get("id"), str) and resource["id"]):
                continue
            started = time.perf_counter()
            verdict = check(resource)
            seconds += time.perf_counter() - started
            checked += 1
            found += verdict is not None and verdict[0] == INVALID_RESOURCE
        rows.append({"what": what, "resources": checked, "invalid": found, "seconds": round(seconds, 1),
                     "resources_per_s": round(checked / seconds), "load_average": round(load, 2)})
    gc.unfreeze()
    return rows


def _rss_mb(pid: int | str = "self") -> float:
    """The current (not peak) resident set of a process, from /proc (0 if it has ended)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


class RssCurve:
    """``progress`` callback of a load: the loader's and the largest worker's current RSS at each
    tenth of the input read.  Flat memory means these stop growing once the caches are full, however
    large the export (a peak alone cannot tell a plateau from a slope)."""

    def __init__(self):
        self.points: list[tuple[int, float, float]] = []

    def __call__(self, done: int, total: int) -> None:
        import multiprocessing

        tenth = 10 * done // max(total, 1)
        if not self.points or tenth > self.points[-1][0]:
            workers = [_rss_mb(p.pid) for p in multiprocessing.active_children()]
            self.points.append((tenth, round(_rss_mb(), 1), round(max(workers, default=0.0), 1)))


def load_once(url: str, folder: str, runs: int, workers: int | None, batch_size: int | None = None) -> list[dict]:
    """In a fresh interpreter: create the CDM at ``url``, load ``folder`` ``runs`` times."""
    from cdm.db import create_cdm, open_engine
    from node.ingest.engine import BATCH, auto_workers, ingest_paths

    batch_size = batch_size or BATCH
    engine = open_engine(url)
    create_cdm(engine, source_name="bench")
    size = sum(p.stat().st_size for p in Path(folder).iterdir())
    used = auto_workers(size) if workers is None else workers
    out = []
    for _ in range(runs):
        load = os.getloadavg()[0]
        started = time.process_time()
        curve = RssCurve()
        summary = ingest_paths(engine, [folder], workers=used, progress=curve, batch_size=batch_size)
        main_cpu = time.process_time() - started
        resources = summary.total()
        out.append({"resources": resources, "loaded": summary.total("loaded"),
                    "unchanged": summary.total("unchanged"), "quarantined": summary.total("quarantined"),
                    "skipped": summary.total("skipped"), "workers": used, "batch_size": batch_size,
                    "load_average": round(load, 2),
                    "seconds": round(summary.seconds, 1), "resources_per_s": round(summary.resources_per_second),
                    "main_cpu_s": round(main_cpu, 1), "main_cpu_us_per_resource": round(1e6 * main_cpu / resources),
                    "worker_cpu_s": round(summary.worker_cpu_seconds, 1),
                    "worker_cpu_us_per_resource": round(1e6 * summary.worker_cpu_seconds / resources),
                    "remapped": summary.remapped,
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "worker_peak_rss_mb": round(summary.worker_peak_rss_mb, 1) if used else None,
                    #: (tenths of the input read, loader RSS MB, largest worker RSS MB) as the load went
                    "rss_curve": curve.points})
    engine.dispose()
    return out


def _in_subprocess(url: str, folder: Path, runs: int, workers: int | None, batch_size: int | None) -> list[dict]:
    done = subprocess.run([sys.executable, __file__, "--one", url, str(folder), str(runs),
                           "auto" if workers is None else str(workers), str(batch_size or 0)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=23_000)
    parser.add_argument("--folder", help="benchmark this export folder instead of the synthetic one")
    parser.add_argument("--reference-sample", type=int, default=20_000,
                        help="resources fhir.resources alone validates for comparison (0: none)")
    parser.add_argument("--no-rerun", action="store_true", help="load once (skip the all-unchanged second load)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--workers", default="auto",
                        help="mapping processes of the loads, comma-separated for several loads each "
                             "(e.g. 1,2; default: auto)")
    parser.add_argument("--skip-steps", action="store_true", help="loads only (no bare parse or validators)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "fhir.json"),
                        help="where to write the figures ('-' for nowhere)")
    parser.add_argument("--batch-size", type=int, help="resources per write transaction (default: the ingest's BATCH)")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        workers = None if args.one[3] == "auto" else int(args.one[3])
        print(json.dumps(load_once(args.one[0], args.one[1], int(args.one[2]), workers, int(args.one[4]) or None)))
        return
    load_before = os.getloadavg()
    folder = Path(args.folder) if args.folder else export_folder(args.patients)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    rows = []
    for step in (bare_parse, hash_and_skip):
        load = os.getloadavg()[0]
        rows.append({**step(folder), "load_average": round(load, 2)})
    if not args.skip_steps:
        rows += validators(folder, args.reference_sample)
    runs = 1 if args.no_rerun else 2
    worker_counts = [None if w == "auto" else int(w) for w in args.workers.split(",")]
    for workers in worker_counts:
        with tempfile.TemporaryDirectory() as tmp:
            for n, r in enumerate(_in_subprocess(str(Path(tmp) / "cdm.sqlite"), folder, runs, workers, args.batch_size)):
                rows.append({"what": "SQLite" + (" (re-run)" if n else ""), **r})
    if not args.no_postgres:
        import psycopg
        from psycopg import sql

        name = f"radfed_bench_fhir_{uuid.uuid4().hex[:8]}"
        for workers in worker_counts:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            try:
                url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
                for n, r in enumerate(_in_subprocess(url, folder, runs, workers, args.batch_size)):
                    rows.append({"what": "PostgreSQL" + (" (re-run)" if n else ""), **r})
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    parse_rate = rows[0]["resources_per_s"]
    for r in rows:
        r["percent_of_bare_parse"] = round(100 * r["resources_per_s"] / parse_rate, 1)
    load_after = os.getloadavg()
    print(f"export: {args.folder or f'{args.patients:,} patients'}, {rows[0]['resources']:,} lines, "
          f"{size_mb:,.0f} MB; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| run | workers | resources | seconds | resources/s | % of bare parse | load avg | "
          "loader CPU µs/resource | worker CPU µs/resource | peak RSS MB (loader / worker) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r.get('workers', '-')} | {r['resources']:,} | {r['seconds']} | "
              f"{r['resources_per_s']:,} | {r['percent_of_bare_parse']}% | {r.get('load_average', '-')} | "
              f"{r.get('main_cpu_us_per_resource', '-')} | {r.get('worker_cpu_us_per_resource', '-')} | "
              f"{r.get('peak_rss_mb', '-')} / {r.get('worker_peak_rss_mb') or '-'} |")
    result = {"command": " ".join(["benchmarks/bench_fhir.py", *sys.argv[1:]]),
              "patients": None if args.folder else args.patients, "folder": str(folder),
              "export_mb": round(size_mb), "cores": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in load_after],
              "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    if args.results != "-":
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        if r.get("rss_curve"):
            print(f"{r['what']}, current RSS MB (loader / largest worker) at each tenth of the input: "
                  + ", ".join(f"{t}: {a:.0f}/{b:.0f}" for t, a, b in r["rss_curve"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
