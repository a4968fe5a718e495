"""What the node's disclosure control adds to the federated count of benchmarks/federation_count_spec.json.

    .venv/bin/python benchmarks/bench_policy_overhead.py [--persons 100000] [--runs 30] [--out results/policy_overhead.json]

One SQLite CDM of ``--persons`` (the same persons as each site of bench_federation.py's 3 x 100k
count) and, interleaved in one run so that load from other processes hits each alike:

* **policy on** -- ``node.execute.run_request`` with a real node.toml and the default policy: rate
  limit, allowlist and limits, approvals and budget checks, release shapes, differencing, the
  linked-release audit, the site-wide auditor (node/disclosure/auditor.py, its history in the state
  database), the hash-chained audit log;
* **minimal policy** -- ``run_request`` without a node configuration: spec parsing, allowlist,
  shapes and small-cell refusal only (no state database: no rate limit, differencing, auditor,
  audit log);
* **raw execution** -- the cohort frame and the analysis alone (``_cohort_frame`` + ``analyse``).

Two cases: a new cohort every request with the frame cache off (``age >= 18 + i``: each is a new
release for differencing and the auditor, and reads the CDM), and a repeat of one spec with the
frame cache on (the execution is then a cached frame, so the policy's own cost shows most).  Each
node of the federated count pays the difference once per request, in parallel with the others.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_federation import SPEC_FILE, fill_persons  # noqa: E402

from cdm import spec as S  # noqa: E402
from cdm.db import create_cdm, open_engine  # noqa: E402
from node.config import load_config  # noqa: E402
from node.disclosure.policy import Policy  # noqa: E402
from node.execute import FRAMES, _cohort_frame, analyse, run_request  # noqa: E402


def _raw(engine, config, spec: dict) -> dict:
    parsed = S.parse_spec(spec)
    ids, values, _ = _cohort_frame(engine, config, parsed)
    return analyse(parsed, len(ids), values, Policy(), engine, "bench", ids)


def _case(engine, config, spec_for, runs: int) -> dict:
    modes = {"policy on": lambda spec, i: run_request(engine, config, {"request_id": f"r{i}", "requester": "bench",
                                                                       "spec": spec}),
             "minimal policy": lambda spec, i: run_request(engine, None, {"request_id": f"m{i}", "requester": "bench",
                                                                          "spec": spec}),
             "raw execution": lambda spec, i: _raw(engine, config, spec)}
    samples = {name: [] for name in modes}
    answers = {}
    for i in range(runs + 2):
        spec = spec_for(i)
        for name, fn in modes.items():
            t0 = time.perf_counter()
            answers[name] = fn(spec, i)
            if i >= 2:  # two warm-ups: imports, compiled SQL, LAPACK
                samples[name].append(1000 * (time.perf_counter() - t0))
    out = {name: {"p50_ms": round(statistics.median(v), 2), "p95_ms": round(sorted(v)[int(0.95 * (len(v) - 1))], 2)}
           for name, v in samples.items()}
    out["overhead_p50_ms"] = round(out["policy on"]["p50_ms"] - out["raw execution"]["p50_ms"], 2)
    out["last_answers"] = {name: (a.get("status"), a.get("code"), (a.get("result") or {}).get("n")) if "status" in a
                           else ("raw", None, a.get("n")) for name, a in answers.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base = json.loads(SPEC_FILE.read_text())
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "persons": args.persons,
              "runs": args.runs, "load_average_at_start": os.getloadavg(), "spec": base}
    with tempfile.TemporaryDirectory(prefix="radfed-policy-") as tmp:
        root = Path(tmp)
        engine = open_engine(root / "cdm.sqlite")
        create_cdm(engine, source_name="bench")
        fill_persons(engine, "site-a", args.persons, 0)
        for name, cache in (("new cohort each request, frame cache off", False),
                            ("repeat of one spec, frame cache on", True)):
            folder = root / ("cold" if not cache else "warm")
            folder.mkdir()
            (folder / "node.toml").write_text(f'[site]\nname = "site-a"\ndata_dir = "data"\n[database]\n'
                                              f'url = "{root / "cdm.sqlite"}"\n[query]\nframe_cache = {str(cache).lower()}\n')
            config = load_config(folder / "node.toml")
            FRAMES.clear()

            def spec_for(i, cache=cache):
                spec = copy.deepcopy(base)
                if not cache:
                    spec["cohort"]["age"] = {"min": 18 + i}
                return spec

            result[name] = _case(engine, config, spec_for, args.runs)
            print(name, json.dumps(result[name]), flush=True)
    result["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
