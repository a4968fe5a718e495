"""Federated learning (issue 9): Flower per-round overhead, and zero-shot rare-disease matching.

    .venv/bin/python benchmarks/bench_learn.py [--rounds 5] [--patients 250] [--zs-rounds 5]
        [--skip-flower] [--skip-zero-shot] [--generator 4000]

Part 1, per-round overhead: a real deployment on loopback — ``flower-superlink`` (TLS, SuperNode
auth, ``--database``) and 2 registered ``flower-supernode`` processes, each site a SQLite CDM — runs
federated Newton on a 3-parameter logistic model for ``--rounds`` rounds.  The same run on the
in-process grid (:class:`cdm.learn.local_grid.LocalGrid`: same ServerApp, same ClientApp, no
transport) gives the compute part; the difference is Flower's transport and scheduling per round
(message polling, one ClientApp subprocess per message, FAB handling).

Part 2, zero-shot: 3 sites x ``--patients`` rare-disease patients planted as the generator does
(node/synth/rare.py), 4 folds over the 20 diseases (5 held out per fold).  Patient encoder trained
federatively (FedAvg, ``--zs-rounds`` rounds) on the other 15; the held-out patients are ranked against
descriptions (MiniLM, frozen).  Reported: generalised (all 20 descriptions) and strict (held-out
descriptions only) top-1/top-5, for (a) the untrained encoder started from the HPO term-name
embeddings, (b) that encoder after federated training, (c) a randomly initialised encoder after
federated training, and chance.  ``--generator N`` repeats the folds on sites built by the real
pipeline (``radfed-node synth`` FHIR for N patients over 3 sites, ``init``, ``ingest fhir``), where
rare-disease patients are one cohort among six.  Results go to benchmarks/results/learn.json (a
partial run updates only its parts).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from learn_sites import DIAGNOSIS_VOCAB, logistic_site, logistic_spec, rare_site, rare_spec, write_node_toml  # noqa: E402

from cdm.db import open_engine  # noqa: E402
from cdm.learn import models as M  # noqa: E402
from cdm.learn.local_grid import LocalGrid  # noqa: E402
from cdm.learn.modelspec import parse_model_spec  # noqa: E402
from cdm.listening import wait_listening  # noqa: E402
from coordinator.learn import serverapp  # noqa: E402
from coordinator.learn.runner import prepare_run, train  # noqa: E402
from coordinator.learn.store import ModelStore  # noqa: E402
from coordinator.natsproc import free_port  # noqa: E402
from coordinator.learn.superlink import FlowerLink, register_supernode, start_superlink  # noqa: E402
from coordinator.tlsinit import make_tls  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from node.config import load_config  # noqa: E402
from node.learn.clientapp import app as client_app  # noqa: E402
from node.learn.supernode import ensure_node_key, start_supernode  # noqa: E402
from node.synth import rare  # noqa: E402

FOLDS = [[code for code, *_ in rare.DISEASES][i::4] for i in range(4)]


def grid(tomls) -> LocalGrid:
    return LocalGrid({i + 1: (client_app, {"radfed-config": str(t)}) for i, t in enumerate(tomls)})


def overhead(root: Path, rounds: int) -> dict:
    tls = make_tls(root / "tls", ["127.0.0.1"])
    link = FlowerLink(root / "flower", "127.0.0.1", free_port(), tls)
    procs = [start_superlink(link, log=lambda m: None)]
    try:
        t0 = time.perf_counter()
        wait_listening(link.host, link.port)
        extra = f'superlink = "{link.address}"\nroot_certificates = "{tls["ca"]}"\n'
        tomls = []
        for i in range(2):
            toml = logistic_site(root / f"site{i}", f"site{i}", 200, 0.3 * i, seed=i + 1, extra_toml=extra)
            config = load_config(toml)
            register_supernode(link, ensure_node_key(config), config.site_name)
            procs.append(start_supernode(config, free_port(), log=lambda m: None))
            tomls.append(toml)
        startup = time.perf_counter() - t0
        model = parse_model_spec(logistic_spec("newton", rounds=rounds))
        t0 = time.perf_counter()
        _, result = train(link, ModelStore(open_engine(root / "coord.sqlite")), model, timeout=60 * rounds + 120)
        submit_to_stored = time.perf_counter() - t0
    finally:
        for p in reversed(procs):
            p.stop()
    local = serverapp.run(grid(tomls), prepare_run(root / "local", model))
    real, inproc = result["round_seconds"], local["round_seconds"]
    return {"rounds": rounds, "startup_s": startup, "submit_to_stored_s": submit_to_stored,
            "round_s_real": real, "round_s_inprocess": inproc,
            "mean_round_s_real": float(np.mean(real)), "mean_round_s_inprocess": float(np.mean(inproc)),
            "mean_overhead_s": float(np.mean(real) - np.mean(inproc))}


def generator_sites(root: Path, patients: int) -> list[Path]:
    """3 sites from the real pipeline: ``radfed-node synth`` (FHIR) -> ``init`` -> ``ingest fhir``."""
    import subprocess

    node = [str(Path(sys.executable).parent / "radfed-node")]
    subprocess.run(node + ["synth", "--sites", "3", "--patients", str(patients), "--seed", "9", "--no-dicom",
                           "--no-bad-records", str(root / "out")], check=True, capture_output=True)
    tomls = []
    for i in (1, 2, 3):
        db = root / f"site{i}.sqlite"
        subprocess.run(node + ["--db", str(db), "init"], check=True, capture_output=True)
        subprocess.run(node + ["--db", str(db), "ingest", "fhir", str(root / "out" / f"site-{i}" / "fhir")],
                       check=True, capture_output=True)
        folder = root / f"site{i}"
        folder.mkdir()
        tomls.append(write_node_toml(folder, f"site-{i}", db, ["condition:HPO:*", f"condition:{DIAGNOSIS_VOCAB}:RD*"],
                                     "rows_per_parameter = 1\n"))
    return tomls


def zero_shot(root: Path, patients: int, rounds: int, generator: bool = False) -> dict:
    from coordinator.learn.text import encode

    if generator:
        tomls = generator_sites(root, patients)
    else:
        tomls = [rare_site(root / f"rare{i}", f"rare{i}", patients, seed=31 + i) for i in range(3)]
    out = {"folds": [], "patients": patients if generator else 3 * patients,
           "source": "radfed-node synth + ingest fhir" if generator else "tests/learn_sites.rare_site"}
    for fold, held in enumerate(FOLDS):
        row = {"held_out": held}
        spec = rare_spec(held, rounds=rounds)
        model = parse_model_spec(spec)
        work = prepare_run(root / f"fold{fold}", model, encode)
        config = serverapp._evaluate_config(model, np.load(work / "text.npy"))
        init = ArrayRecord(M.initial_arrays(model, np.load(work / "feature_text.npy")))
        _, pooled, _ = serverapp.evaluate_sites(grid(tomls), model, init, config)
        row["text_init_untrained"] = serverapp.summarise(model, pooled)
        t0 = time.perf_counter()
        row["text_init_trained"] = serverapp.run(grid(tomls), work)["pooled_rates"]
        row["train_s"] = time.perf_counter() - t0
        spec["zero_shot"]["feature_text"] = {}
        spec["training"]["learning_rate"] = 0.01
        model = parse_model_spec(spec)
        row["random_init_trained"] = serverapp.run(grid(tomls), prepare_run(root / f"rand{fold}", model, encode))["pooled_rates"]
        row["unseen_n"] = pooled["unseen-n"]
        out["folds"].append(row)
        print(f"fold {fold}: {json.dumps(row)}", flush=True)
    keys = ("unseen-top1", "unseen-top5", "unseen-only-top1", "unseen-only-top5", "seen-top1")
    for variant in ("text_init_untrained", "text_init_trained", "random_init_trained"):
        out[variant] = {k: float(np.mean([f[variant][k] for f in out["folds"]])) for k in keys}
    out["chance"] = {"unseen-top1": 1 / 20, "unseen-top5": 5 / 20, "unseen-only-top1": 1 / 5, "unseen-only-top5": 1.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--patients", type=int, default=250)
    ap.add_argument("--zs-rounds", type=int, default=5)
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--generator", type=int, metavar="PATIENTS",
                    help="Also run the zero-shot folds on PATIENTS generated by radfed-node synth and ingested "
                         "through the FHIR ingest (all cohorts; about 1 in 6 patients is a rare-disease case).")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    out = REPO / "benchmarks" / "results" / "learn.json"
    results = json.loads(out.read_text()) if out.exists() else {}  # a partial run updates its parts
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_flower:
            load = Path("/proc/loadavg").read_text().split()[:3]
            results["overhead"] = {**overhead(Path(tmp) / "flower", args.rounds), "load_average": load}
            print(json.dumps(results["overhead"], indent=1), flush=True)
        if not args.skip_zero_shot:
            load = Path("/proc/loadavg").read_text().split()[:3]
            results["zero_shot"] = {**zero_shot(Path(tmp) / "zs", args.patients, args.zs_rounds), "load_average": load}
        if args.generator:
            load = Path("/proc/loadavg").read_text().split()[:3]
            results["zero_shot_generator"] = {**zero_shot(Path(tmp) / "gen", args.generator, args.zs_rounds, True),
                                              "load_average": load}
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results.get("overhead"), indent=1))
    for key in ("zero_shot", "zero_shot_generator"):
        print(json.dumps({k: v for k, v in results.get(key, {}).items() if k != "folds"}, indent=1))


if __name__ == "__main__":
    main()
