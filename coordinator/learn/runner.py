"""``radfed train``: prepare a run folder, submit the app to the SuperLink, wait, store the model.

The run folder (``HOME/flower/runs/<id>/``) holds what the ServerApp reads — the model spec and,
for a patient encoder, the description (and feature-name) embeddings from :mod:`.text` — and what it
writes back: ``model.npz`` and ``result.json``.  The app is submitted with ``flwr run`` (Control API)
as the FAB of :mod:`.bundle`; the stored model records the Flower run id and that FAB's hash.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from cdm import __version__
from cdm.learn.modelspec import ModelSpec
from coordinator.learn.bundle import FLWR_VERSION, fab_hash, write_app
from coordinator.learn.store import ModelStore, arrays_from_bytes
from coordinator.learn.superlink import CONNECTION, FlowerError, FlowerLink


def prepare_run(folder: Path, model: ModelSpec, encode=None) -> Path:
    """Write the run folder; ``encode`` (texts -> unit vectors) is needed for a patient encoder."""
    work = folder / "runs" / uuid.uuid4().hex
    work.mkdir(parents=True)
    (work / "model_spec.json").write_text(model.canonical_json(), encoding="utf-8")
    if model.model.type == "patient_encoder":
        if encode is None:
            from coordinator.learn.text import encode
        labels = list(model.variables[model.target].codes)
        np.save(work / "text.npy", encode([model.zero_shot.descriptions[label] for label in labels]))
        names = model.zero_shot.feature_text
        if names and all(f in names for f in model.features):
            np.save(work / "feature_text.npy", encode([names[f] for f in model.features]))
    return work


def submit(link: FlowerLink, work: Path) -> tuple[str, str]:
    """Start the run; (Flower run id, full FAB hash)."""
    app = write_app(work / "app")
    answer = link.flwr("run", str(app), CONNECTION, "--run-config", f"work-dir={json.dumps(str(work))}")
    return str(answer.get("run-id")), fab_hash(app)


def wait_result(work: Path, timeout: float, poll: float = 0.5) -> dict:
    path = work / "result.json"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(poll)
    raise FlowerError(f"no result after {timeout:.0f} s (is a SuperNode of each site connected? see {work})")


def train(link: FlowerLink, store: ModelStore, model: ModelSpec, requester: str = "local",
          timeout: float | None = None, encode=None) -> tuple[str, dict]:
    """Run ``model`` on the federation; (model id in the store, result)."""
    work = prepare_run(link.folder, model, encode)
    run_id, fab = submit(link, work)
    budget = timeout or model.federation.timeout * (model.training.rounds + 2)
    result = wait_result(work, budget)
    if result.get("status") != "ok":
        raise FlowerError(f"run {run_id} failed: {result.get('message')}")
    arrays = arrays_from_bytes((work / "model.npz").read_bytes())
    provenance = {"radfed": __version__, "flwr": FLWR_VERSION, "requester": requester,
                  "strategy": model.training.strategy, "rounds": model.training.rounds,
                  "sites": sorted(result.get("sites", {})), "run_folder": str(work)}
    model_id = store.add(name=model.name, spec=json.loads(model.canonical_json()), spec_digest=model.digest(),
                         arrays=arrays, result=result, provenance=provenance, flower_run_id=run_id, fab_hash=fab)
    return model_id, result
