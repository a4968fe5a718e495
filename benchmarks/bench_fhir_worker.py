"""The FHIR ingest's worker process alone: its CPU per resource, in this process, without a loader.

In a real run the worker and the loader share the cores, so neither's figure is its own.  This
benchmark cuts a folder into the units the pool would hand out (``ndjson_blocks`` of ``BLOCK``
bytes, one unit per Bundle file, in load order), opens a fresh SQLite CDM, starts a worker in this
process (``worker.start``) and calls ``Worker.unit`` on every unit, then pickles its records as
``map_unit`` does (``worker.ship``) (the file I/O of the hand-over is left out).  Nothing is written to the CDM: the
worker answers references from what it mapped itself, as it does for the units of one file in a
real run.  Beyond its reference cache (2 x ``CACHE_SIZE`` resources, ~200,000) a forgotten
reference is asked of that empty CDM and stays unresolved, which costs more than in a real run,
where it is found: on the 1M export Observations cost 168 CPU µs here against 98 with a cache
holding everything, while a real load's worker does not change with the cache (benchmarks/README.md,
stop 30).  It prints the CPU per resource of the units and of the pickling; with ``--profile``
cProfile's top entries; with ``--dump`` it writes every unit's records (pickled) to a file, to
compare what two versions of the worker ship (``compare``).  Deterministic enough for
``valgrind --tool=callgrind`` A/B comparisons of worker changes (use ``--repeat 1``).

    .venv/bin/python benchmarks/bench_fhir_worker.py run /tmp/radfed-bench-fhir-2000/site-1/fhir [--repeat 3] [--profile]
    .venv/bin/python benchmarks/bench_fhir_worker.py run FOLDER --dump /tmp/records-a.pkl
    .venv/bin/python benchmarks/bench_fhir_worker.py compare /tmp/records-a.pkl /tmp/records-b.pkl

``--stages`` first times the worker's first steps alone (parse, content hash, validation) on the
same units: the part of the worker's CPU that any design validating every resource keeps.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pickle
import pstats
import tempfile
import time


def units_of(folder: str, unit_bytes: int) -> list[tuple]:
    """The tasks the pool would hand a worker for ``folder``, in order, with the NDJSON blocks inline."""
    from node.ingest.reader import discover, ndjson_blocks

    tasks = []
    for input_file in discover([folder]):
        path = str(input_file.path)
        if input_file.kind == "bundle":
            tasks.append(("bundle", path, None, 0, None))
        elif input_file.kind != "export-metadata":
            for block in ndjson_blocks(input_file, None, unit_bytes):
                if isinstance(block, tuple):  # not a damaged gzip stream's last item
                    tasks.append(("ndjson", path, input_file.resource_type, block[0], block[1]))
    return tasks


def stages(tasks: list[tuple]) -> None:
    """The worker's first steps alone on the NDJSON units, each timed over every resource: what
    the rest of a unit (mapping, the records, pickling) is measured against (the floor of a worker
    that validates every resource)."""
    from node.ingest.mapping import content_hash
    from node.ingest.validate import _warm, problem, relaxed_gc
    from node.ingest.worker import ndjson_entries

    _warm()
    relaxed_gc()  # as the worker's start
    parse = hashed = validated = 0.0
    resources = 0
    for kind, path, hint, first, block in tasks:
        if kind != "ndjson":
            continue
        started = time.process_time()
        parsed = [r for _, _, r, _ in ndjson_entries(path, hint, first, block) if r is not None]
        parse += time.process_time() - started
        started = time.process_time()
        for r in parsed:
            content_hash(r)
        hashed += time.process_time() - started
        started = time.process_time()
        for r in parsed:
            problem(r)
        validated += time.process_time() - started
        resources += len(parsed)
    n = resources or 1
    print(f"worker's first steps: {resources:,} resources: parse {parse * 1e6 / n:.1f}, content hash "
          f"{hashed * 1e6 / n:.1f}, validate {validated * 1e6 / n:.1f} CPU us a resource "
          f"(together {(parse + hashed + validated) * 1e6 / n:.1f})")


def run(folder: str, unit_bytes: int, profile: bool, dump: str | None) -> None:
    """Map every unit of ``folder`` with a fresh worker over a fresh CDM; print its CPU per resource."""
    from cdm.db import create_cdm, open_engine
    from node.ingest import worker
    from node.ingest.engine import CACHE_SIZE
    from node.fhir_profile import DEFAULT_MRN_SYSTEM

    tasks = units_of(folder, unit_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(os.path.join(tmp, "cdm.sqlite"))
        create_cdm(engine, source_name="bench")
        engine.dispose()
        worker.start(engine.url.render_as_string(hide_password=False), DEFAULT_MRN_SYSTEM, CACHE_SIZE, False)
        profiler = cProfile.Profile() if profile else None
        recorded = [] if dump else None
        resources = 0
        unit_cpu = pickle_cpu = 0.0
        if profiler:
            profiler.enable()
        for task in tasks:
            started = time.process_time()
            records = worker._worker.unit(task)
            mapped = time.process_time()
            out = io.BytesIO()
            worker.ship(records, out)  # as map_unit, into memory
            shipped = out.getvalue()
            unit_cpu += mapped - started
            pickle_cpu += time.process_time() - mapped
            resources += len(records)
            if recorded is not None:
                recorded.append(shipped)
        if profiler:
            profiler.disable()
        worker._worker.engine.dispose()
    total = unit_cpu + pickle_cpu
    resources = resources or 1  # an empty folder: the start-up alone (a callgrind baseline)
    print(f"worker alone: {len(tasks)} units, {resources:,} resources, {total:.2f} CPU s = "
          f"{total * 1e6 / resources:.1f} CPU us a resource (unit {unit_cpu * 1e6 / resources:.1f}, "
          f"pickle {pickle_cpu * 1e6 / resources:.1f})")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
    if dump:
        with open(dump, "wb") as handle:
            pickle.dump(recorded, handle, pickle.HIGHEST_PROTOCOL)
        print(f"records -> {dump}")


def compare(first: str, second: str) -> int:
    """Compare two dumps record by record, field by field; print the first differences."""
    with open(first, "rb") as handle:
        a = [pickle.loads(unit) for unit in pickle.load(handle)]
    with open(second, "rb") as handle:
        b = [pickle.loads(unit) for unit in pickle.load(handle)]
    differences = 0
    if len(a) != len(b):
        print(f"units: {len(a)} against {len(b)}")
        differences += 1
    for number, (unit_a, unit_b) in enumerate(zip(a, b)):
        if len(unit_a) != len(unit_b):
            print(f"unit {number}: {len(unit_a)} records against {len(unit_b)}")
            differences += 1
        for record_a, record_b in zip(unit_a, unit_b):
            if record_a != record_b or repr(record_a) != repr(record_b):
                differences += 1
                if differences <= 10:
                    for field, (x, y) in enumerate(zip(record_a, record_b)):
                        if x != y or repr(x) != repr(y):
                            print(f"unit {number} line {record_a[0]} field {field}: {x!r:.300} against {y!r:.300}")
    records = sum(len(u) for u in a)
    print(f"{records:,} records in {len(a)} units: {differences} differences")
    return differences


def main() -> None:
    from node.ingest.pool import BLOCK

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timed = commands.add_parser("run")
    timed.add_argument("folder")
    timed.add_argument("--repeat", type=int, default=1)
    timed.add_argument("--unit-bytes", type=int, default=BLOCK)
    timed.add_argument("--profile", action="store_true")
    timed.add_argument("--dump", help="write every unit's pickled records here")
    timed.add_argument("--stages", action="store_true",
                       help="first time parsing, hashing and validating alone (the worker's floor)")
    same = commands.add_parser("compare")
    same.add_argument("first")
    same.add_argument("second")
    args = parser.parse_args()
    if args.command == "compare":
        raise SystemExit(1 if compare(args.first, args.second) else 0)
    for _ in range(args.repeat):
        if args.stages:
            stages(units_of(args.folder, args.unit_bytes))
        run(args.folder, args.unit_bytes, args.profile, args.dump)


if __name__ == "__main__":
    main()
