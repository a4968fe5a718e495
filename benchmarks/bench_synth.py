"""Benchmark the synthetic cohort generator: throughput, and that memory stays flat as output grows.

Each configuration runs in a fresh interpreter (so peak RSS belongs to that run alone) and reports
wall time, FHIR resources written, resources/s, the process's peak RSS and (``--tracemalloc``)
the peak of traced Python allocations.  Streaming holds if the peaks barely move while the output grows 10x.

    .venv/bin/python benchmarks/bench_synth.py        # FHIR-only ~100k and ~1M resources, + demo build
    .venv/bin/python benchmarks/bench_synth.py --sizes 300 3000 --dicom-sizes --tracemalloc
    .venv/bin/python benchmarks/bench_synth.py --sizes --dicom-sizes 300 1200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def run_one(patients: int, dicom: bool, sites: int, trace: bool) -> dict:
    from node.synth import SynthOptions, generate

    with tempfile.TemporaryDirectory() as out:
        if trace:
            tracemalloc.start()
        started = time.perf_counter()
        truth = generate(out, SynthOptions(sites=sites, patients=patients, seed=1, dicom=dicom, dicom_fraction=0.25))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace else None
        tracemalloc.stop()
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {
        "patients": patients, "sites": sites, "dicom": dicom, "seconds": round(elapsed, 2),
        "resources": truth["resources"], "dicom_files": truth["dicom"]["files"],
        "resources_per_s": round(truth["resources"] / elapsed), "output_mb": round(size / 1e6, 1),
        "tracemalloc_peak_mb": round(peak / 1e6, 1) if trace else "-",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2300, 23000],
                        help="FHIR-only patient counts (default ~100k and ~1M resources)")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (about 4x slower)")
    parser.add_argument("--dicom-sizes", type=int, nargs="*", default=[300],
                        help="patient counts built with DICOM (default: the demo's 300)")
    parser.add_argument("--one", nargs=4, metavar=("PATIENTS", "DICOM", "SITES", "TRACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1] == "1", int(args.one[2]), args.one[3] == "1")))
        return
    runs = [(n, 0, 3) for n in args.sizes] + [(n, 1, 3) for n in args.dicom_sizes]
    print(f"{'patients':>8} {'dicom':>5} {'seconds':>8} {'resources':>10} {'res/s':>8} {'dcm files':>9} "
          f"{'out MB':>7} {'py peak MB':>10} {'RSS MB':>7}")
    for patients, dicom, sites in runs:
        result = subprocess.run([sys.executable, __file__, "--one", str(patients), str(dicom), str(sites),
                                 str(int(args.tracemalloc))],
                                capture_output=True, text=True, check=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{r['patients']:>8} {str(r['dicom']):>5} {r['seconds']:>8} {r['resources']:>10,} {r['resources_per_s']:>8,} "
              f"{r['dicom_files']:>9,} {r['output_mb']:>7} {r['tracemalloc_peak_mb']:>10} {r['peak_rss_mb']:>7}")


if __name__ == "__main__":
    main()
