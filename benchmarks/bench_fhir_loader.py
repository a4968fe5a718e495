"""The FHIR ingest's loading process alone: its CPU per resource without the workers beside it.

In a real run the loader and its workers share the cores, so neither's figure is its own.  This
benchmark records, once, what the workers hand the loader for an export (every unit's records,
pickled as the pool sends them, and the end-of-file marks), then feeds that recording to
``IngestRun.take`` in a fresh SQLite CDM, exactly as ``ingest_paths`` does, and times the loading
process only: unpickling, replay, batching, writing, the end of the run.  With ``--profile`` it
prints cProfile's top entries (where benchmarks/README.md's "where the loader's time goes" comes
from).  Deterministic enough for ``valgrind --tool=callgrind`` A/B comparisons of loader changes.

    .venv/bin/python benchmarks/bench_fhir_loader.py record /tmp/radfed-bench-fhir-2000/site-1/fhir /tmp/units.pkl
    .venv/bin/python benchmarks/bench_fhir_loader.py run /tmp/units.pkl [--repeat 3] [--batch 5000] [--profile]

``--profile`` sorts by ``$SORT`` (default ``tottime``; ``cumulative`` shows where whole steps go) and
prints the top ``$TOP`` entries (default 30).

A recording of the 1M-resource export takes ~1.7 GB of memory to replay (the units' blocks and
records are held).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import resource
import tempfile
import time


def record(folder: str, out: str) -> None:
    """Load ``folder`` with one worker into a scratch CDM, keeping what the loader was given."""
    from cdm.db import create_cdm, open_engine
    from node.ingest import engine as ingest

    units: list[tuple] = []
    take, flush = ingest.IngestRun.take, ingest.IngestRun.flush

    def recorded_take(self, source_file, block, handed_out, records):
        units.append(("take", source_file, block, handed_out, pickle.dumps(records, pickle.HIGHEST_PROTOCOL)))
        return take(self, source_file, block, handed_out, records)

    def recorded_flush(self):
        units.append(("flush",))
        return flush(self)

    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(os.path.join(tmp, "cdm.sqlite"))
        create_cdm(engine, source_name="bench")
        ingest.IngestRun.take, ingest.IngestRun.flush = recorded_take, recorded_flush
        try:
            summary = ingest.ingest_paths(engine, [folder], workers=1)
        finally:
            ingest.IngestRun.take, ingest.IngestRun.flush = take, flush
            engine.dispose()
    with open(out, "wb") as handle:
        pickle.dump(units, handle, pickle.HIGHEST_PROTOCOL)
    print(f"recorded {len(units)} units, {summary.total():,} resources -> {out}")


def replay(path: str, batch: int, profile: bool) -> None:
    """Feed a recording to a fresh SQLite CDM's ingest run; print the loader's CPU per resource."""
    from cdm.db import create_cdm, open_engine
    from node.ingest import deferred_indexes
    from node.ingest.engine import IngestRun
    from node.ingest.validate import relaxed_gc

    with open(path, "rb") as handle:
        units = pickle.load(handle)
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(os.path.join(tmp, "cdm.sqlite"))
        create_cdm(engine, source_name="bench")
        relaxed_gc()  # as ingest_paths
        run = IngestRun(engine, batch_size=batch)
        run._tracking = True  # as _with_workers
        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        # as ingest_paths does for a load this size: the person tables' indexes set aside
        run.indexes_set_aside = deferred_indexes.set_aside(engine, 0, True)
        for unit in units:
            if unit[0] == "flush":
                run.flush()
            else:
                run.take(unit[1], unit[2], unit[3], pickle.loads(unit[4]))
                run.forget_writes(run.writes)
        summary = run.finish()
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        run.close()
        engine.dispose()
    n = summary.total()
    print(f"loader alone, batches of {batch:,}: {n:,} resources, {cpu:.1f} CPU s = {cpu * 1e6 / n:.1f} CPU us a "
          f"resource, {wall:.1f} s wall, remapped {summary.remapped}, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "30")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("folder")
    rec.add_argument("out")
    run = commands.add_parser("run")
    run.add_argument("recording")
    run.add_argument("--repeat", type=int, default=1)
    run.add_argument("--batch", type=int, default=5_000)
    run.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.command == "record":
        record(args.folder, args.out)
    else:
        for _ in range(args.repeat):
            replay(args.recording, args.batch, args.profile)


if __name__ == "__main__":
    main()
