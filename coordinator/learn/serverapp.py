"""The Flower ServerApp: run the model spec's strategy, then evaluate the final model at every site.

The SuperLink starts this in a subprocess on the coordinator host.  ``run_config["work-dir"]`` is the
run's folder under the coordinator home (written by :mod:`coordinator.learn.runner`):
``model_spec.json``, and for a patient encoder ``text.npy`` (description embeddings, rows in the
target's label order) and optionally ``feature_text.npy``.  The ServerApp writes ``model.npz`` (final
parameters) and ``result.json`` (per-round training loss and seconds, per-site and pooled
evaluation) there; ``status`` is ``ok`` or ``error`` with a message, never a traceback.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from cdm.learn import models as M
from cdm.learn.modelspec import ModelSpec, parse_model_spec
from coordinator.learn.strategies import strategy_for

log = logging.getLogger(__name__)
app = ServerApp()


class PromptGrid(Grid):
    """Flower's grid, but polling for replies every ``interval`` s: Flower 1.42's HTTP grid sleeps a
    fixed 3 s between pulls, which is most of a small model's round time."""

    def __init__(self, grid: Grid, interval: float = 0.2):
        self._grid, self._interval = grid, interval

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.monotonic() < end):
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(self._interval)
        return replies


def _text_inputs(model: ModelSpec, work: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    if model.model.type != "patient_encoder":
        return None, None
    text = np.load(work / "text.npy")
    feature_text = np.load(work / "feature_text.npy") if (work / "feature_text.npy").exists() else None
    return text, feature_text


def _train_config(model: ModelSpec, text: np.ndarray | None) -> ConfigRecord:
    config = {"model-spec": model.canonical_json()}
    if text is not None:
        labels = list(model.variables[model.target].codes)
        keep = model.training_labels()
        config["labels"] = keep
        config["text"] = M.pack_matrix(text[[labels.index(label) for label in keep]])
    return ConfigRecord(config)


def _evaluate_config(model: ModelSpec, text: np.ndarray | None) -> ConfigRecord:
    config = {"model-spec": model.canonical_json(), "server-round": model.training.rounds}
    if text is not None:
        config["labels"] = list(model.variables[model.target].codes)
        config["held-out"] = list(model.zero_shot.held_out) or [""]
        config["text"] = M.pack_matrix(text)
    return ConfigRecord(config)


def evaluate_sites(grid: Grid, model: ModelSpec, arrays: ArrayRecord, config: ConfigRecord) -> tuple[dict, dict, list]:
    """(per-site metrics, pooled sums, refusals) of the final model; sums pool exactly."""
    messages = [Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node_id,
                        message_type=MessageType.EVALUATE) for node_id in grid.get_node_ids()]
    sites, pooled, refusals = {}, {}, []
    for reply in grid.send_and_receive(messages, timeout=model.federation.timeout):
        if reply.has_error():
            refusals.append(reply.error.reason)
            continue
        metrics = dict(reply.content["metrics"])
        name = str(reply.content["site"]["site"])
        sites[name] = metrics
        for key, value in metrics.items():
            pooled[key] = pooled.get(key, 0) + value
    return sites, pooled, refusals


def summarise(model: ModelSpec, pooled: dict) -> dict:
    """Rates from pooled sums."""
    out = {}
    if model.model.type != "patient_encoder" and pooled.get("n"):
        out = {"loss": pooled["loss_sum"] / pooled["n"], "accuracy": pooled["correct"] / pooled["n"]}
    for group in ("seen", "unseen", "unseen-only"):
        n = pooled.get(f"{group}-n")
        if n:
            out.update({f"{group}-top{k}": pooled[f"{group}-top{k}"] / n for k in (1, 5)})
    return out


def run(grid: Grid, work: Path) -> dict:
    t0 = time.perf_counter()
    model = parse_model_spec((work / "model_spec.json").read_text())
    text, feature_text = _text_inputs(model, work)
    strategy = strategy_for(model)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(M.initial_arrays(model, feature_text)),
                            num_rounds=model.training.rounds, timeout=model.federation.timeout,
                            train_config=_train_config(model, text))
    arrays = result.arrays.to_numpy_ndarrays()
    if len(result.train_metrics_clientapp) < model.training.rounds:
        short = ", ".join(f"round {r}: {n}" for r, n in getattr(strategy, "short_rounds", []))
        raise RuntimeError(f"only {len(result.train_metrics_clientapp)} of {model.training.rounds} rounds "
                           f"had {model.federation.min_sites} site(s) answering (see the site audit logs)"
                           + (f"; sites answering {short}" if short else ""))
    np.savez(work / "model.npz", *arrays)
    sites, pooled, refusals = evaluate_sites(grid, model, result.arrays, _evaluate_config(model, text))
    return {
        "status": "ok", "model": model.name, "spec_digest": model.digest(),
        "strategy": model.training.strategy, "rounds": model.training.rounds,
        "train_loss": {int(r): float(m["loss"]) for r, m in result.train_metrics_clientapp.items()},
        "round_seconds": getattr(strategy, "round_seconds", []),
        "sites": sites, "pooled": pooled, "pooled_rates": summarise(model, pooled),
        "evaluation_refusals": refusals, "seconds": time.perf_counter() - t0,
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    work = Path(str(context.run_config["work-dir"]))
    try:
        outcome = run(PromptGrid(grid), work)
    except Exception as exc:  # noqa: BLE001 - recorded for `radfed train`, the run still ends cleanly
        log.exception("radfed ServerApp failed")
        outcome = {"status": "error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    (work / "result.json.tmp").write_text(json.dumps(outcome, indent=1, default=float))
    (work / "result.json.tmp").replace(work / "result.json")
