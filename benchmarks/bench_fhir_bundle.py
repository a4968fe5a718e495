"""Benchmark one big FHIR Bundle file: streamed (node/ingest/reader.py ``read_big_bundle``) vs read whole.

A collection Bundle of about ``--mb`` MB is generated once under ``/tmp`` from the 92,073-resource
synthetic export (``bench_fhir.export_folder(2000)``): its resources copied as often as needed, each
copy with its own ids (the first two hex digits of every uuid) and MRNs, references as the export
writes them (``Type/id``), every entry with a fullUrl.  Each load runs in a fresh interpreter into a
fresh SQLite CDM (``ingest_paths``, 1 worker: ``auto_workers`` on 2 cores), so the loader's peak RSS
is its own; the worker's peak comes from the run summary.  ``--whole`` raises the threshold
(``reader.STREAM_BYTES``) above the file: the Bundle is read whole, by the worker.

    .venv/bin/python benchmarks/bench_fhir_bundle.py --mb 200 --mb 800 --whole-up-to 200
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_UUID = re.compile(rb'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
_MRN = re.compile(rb'"value":"0(\d{8})"')
_TYPE_AND_ID = re.compile(rb'^\{"resourceType":"([A-Za-z]+)","id":"([^"]+)"')


def _parses(line: bytes) -> bool:
    import orjson

    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:  # the export's planted bad lines
        return False


def big_bundle(megabytes: int) -> Path:
    """The generated Bundle of about ``megabytes`` MB (made on first use, then reused)."""
    from bench_fhir import export_folder

    path = Path(tempfile.gettempdir()) / f"radfed-bench-bundle-{megabytes}mb.json"
    if path.exists():
        return path
    from node.ingest.reader import rank

    lines = []  # in load order, so that a last, partial copy has its patients
    for ndjson in sorted(export_folder(2000).glob("[A-Z]*.ndjson"), key=lambda f: (rank(f.name.split(".")[0]), f.name)):
        lines += [line for line in ndjson.read_bytes().splitlines() if _TYPE_AND_ID.match(line) and _parses(line)]
    part = path.with_suffix(".part")
    with open(part, "wb") as out:
        out.write(b'{"resourceType":"Bundle","type":"collection","entry":[')
        copy, first = 0, True
        while out.tell() < megabytes << 20:
            prefix = b"%02x" % copy
            for line in lines:
                if out.tell() >= megabytes << 20:
                    break
                if copy:
                    line = _UUID.sub(lambda m: prefix + m.group(0)[2:], line)
                    line = _MRN.sub(lambda m: b'"value":"%b%b"' % (b"%x" % copy, m.group(1)), line)
                kind, rid = _TYPE_AND_ID.match(line).groups()
                out.write((b"" if first else b",") + b'{"fullUrl":"http://site-1.example/fhir/%b/%b","resource":%b}'
                          % (kind, rid, line))
                first = False
            copy += 1
        out.write(b'],"total":0}')
    part.rename(path)
    return path


def one(path: str, whole: bool) -> dict:
    """One load in this (fresh) process."""
    from cdm.db import create_cdm, open_engine
    from node.ingest import reader
    from node.ingest.engine import ingest_paths

    if whole:
        reader.STREAM_BYTES = 1 << 40
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(Path(tmp) / "cdm.sqlite")
        create_cdm(engine, source_name="bench")
        started = time.perf_counter()
        summary = ingest_paths(engine, [path], workers=1)
        seconds = time.perf_counter() - started
    resources = sum(counts[k] for counts in summary.as_dict()["by_type"].values()
                    for k in ("loaded", "updated", "unchanged", "quarantined", "skipped"))
    return {"resources": resources, "seconds": round(seconds, 1), "resources_per_s": round(resources / seconds),
            "loader_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mb": round(summary.worker_peak_rss_mb, 1), "remapped": summary.remapped,
            "loaded": summary.total("loaded")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, action="append", help="Bundle sizes in MB (default 200 and 800)")
    parser.add_argument("--whole-up-to", type=int, default=200, help="also read whole the Bundles up to this size")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "whole")))
        return
    results = []
    for megabytes in args.mb or [200, 800]:
        path = big_bundle(megabytes)
        for mode in ("streamed", "whole") if megabytes <= args.whole_up_to else ("streamed",):
            done = subprocess.run([sys.executable, __file__, "--one", str(path), mode],
                                  capture_output=True, text=True, check=True)
            result = {"file_mb": round(path.stat().st_size / 2**20), "mode": mode, **json.loads(done.stdout)}
            results.append(result)
            print(json.dumps(result), flush=True)
    out = Path(__file__).resolve().parent / "results" / "fhir-issue23-big-bundle.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1) + "\n")
    print("| Bundle MB | read | resources | resources/s | loader peak RSS MB | worker peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['file_mb']} | {r['mode']} | {r['resources']:,} | {r['resources_per_s']:,} | "
              f"{r['loader_peak_rss_mb']} | {r['worker_peak_rss_mb']} |")


if __name__ == "__main__":
    main()
