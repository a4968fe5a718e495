"""Our ServerApp strategies and ClientApp on an in-process Flower Grid (no transport), 2-3 site CDMs.

Equivalences checked (and their tolerances):
* FedAvg with one local full-batch gradient step per round == pooled gradient descent, round by
  round (the row-weighted mean of the sites' mean gradients is the pooled mean gradient): 1e-12.
* Federated Newton == pooled Newton-Raphson MLE after 6 rounds: 1e-9.
Policy: a site without ``[learning]``, a feature outside ``allowed_features``, or too few rows refuses,
audits the refusal, and the run reports which round failed instead of storing a model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from learn_sites import logistic_site, logistic_spec, rare_site, rare_spec  # noqa: E402

from cdm.db import open_engine  # noqa: E402
from cdm.learn import models as M  # noqa: E402
from cdm.learn.local_grid import LocalGrid  # noqa: E402
from cdm.learn.modelspec import ModelSpecError, parse_model_spec  # noqa: E402
from coordinator.learn import serverapp  # noqa: E402
from coordinator.learn.runner import prepare_run  # noqa: E402
from coordinator.learn.store import ModelStore  # noqa: E402
from node.audit import AuditLog  # noqa: E402
from node.config import load_config  # noqa: E402
from node.learn.clientapp import app as client_app  # noqa: E402
from node.learn.data import training_rows, variable_key  # noqa: E402
from node.disclosure.policy import Refusal  # noqa: E402


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn_sites")
    return [logistic_site(root / f"site{i}", f"site{i}", n, shift, seed=i + 1)
            for i, (n, shift) in enumerate(((120, 0.0), (160, 0.5), (90, -0.4)))]


def run_local(tomls, spec: dict, tmp_path: Path, encode=None) -> tuple[dict, Path]:
    model = parse_model_spec(spec)
    work = prepare_run(tmp_path, model, encode)
    grid = LocalGrid({i + 1: (client_app, {"radfed-config": str(t)}) for i, t in enumerate(tomls)})
    return serverapp.run(grid, work), work


def pooled_rows(tomls, spec: dict):
    model = parse_model_spec(spec)
    X, y = [], []
    for toml in tomls:
        config = load_config(toml)
        rows = training_rows(open_engine(config.database_url), config, model, config.site_name)
        X.append(rows.X)
        y += rows.y
    return np.vstack(X), np.array(y)


def test_fedavg_one_local_step_is_pooled_gradient_descent(sites, tmp_path):
    spec = logistic_spec("fedavg", rounds=5, learning_rate=0.5, local_epochs=1)
    result, work = run_local(sites, spec, tmp_path)
    X, y = pooled_rows(sites, spec)
    Xd, w = M.design(X), np.zeros(3)
    for _ in range(5):
        w = M.gradient_descent(w, Xd, y, lr=0.5, epochs=1)
    federated = np.load(work / "model.npz")["arr_0"]
    np.testing.assert_allclose(federated, w, rtol=0, atol=1e-12)
    assert result["pooled"]["n"] == 370 and set(result["sites"]) == {"site0", "site1", "site2"}
    losses = [result["train_loss"][r] for r in sorted(result["train_loss"])]
    assert all(b < a for a, b in zip(losses, losses[1:]))  # full-batch GD on a convex loss descends


def test_newton_reaches_pooled_mle_and_pooled_evaluation_is_exact(sites, tmp_path):
    spec = logistic_spec("newton", rounds=6)
    result, work = run_local(sites, spec, tmp_path)
    X, y = pooled_rows(sites, spec)
    mle = M.newton_fit(X, y)
    np.testing.assert_allclose(np.load(work / "model.npz")["arr_0"], mle, rtol=0, atol=1e-9)
    expected = M.binary_metrics(parse_model_spec(spec), [mle], X, y)
    assert result["pooled"]["correct"] == expected["correct"]
    assert result["pooled_rates"]["loss"] == pytest.approx(expected["loss_sum"] / len(y), abs=1e-9)
    assert sum(s["n"] for s in result["sites"].values()) == len(y)


def test_fedprox_and_mlp_learn_the_signal(sites, tmp_path):
    prox, _ = run_local(sites, logistic_spec("fedprox", rounds=8, learning_rate=0.5, local_epochs=5,
                                             proximal_mu=0.1), tmp_path)
    assert prox["train_loss"][8] < prox["train_loss"][1] - 0.05
    spec = logistic_spec("fedavg", rounds=8, learning_rate=0.05, local_epochs=5)
    spec["model"] = {"type": "mlp", "hidden": [8]}
    mlp, work = run_local(sites, spec, tmp_path)
    assert mlp["pooled_rates"]["accuracy"] > 0.65  # the planted logistic signal; majority class is ~0.5
    assert len(np.load(work / "model.npz").files) == 4  # two Linear layers: weight + bias each


def test_site_policy_refusals_are_audited_and_fail_the_run(sites, tmp_path):
    spec = logistic_spec("newton", rounds=2)
    spec["variables"]["age"] = {"kind": "age"}
    spec["features"] = ["a", "b", "age"]  # age is not in the sites' allowed_features
    with pytest.raises(RuntimeError, match="only 0 of 2 rounds"):
        run_local(sites[:2], spec, tmp_path)
    config = load_config(sites[0])
    refused = [e for e in AuditLog.for_config(config).entries() if e["decision"] == "refused"]
    assert len(refused) == 2 and {e["code"] for e in refused} == {"NOT_ALLOWED"}
    assert all(e["released"] is None and e["request_id"].endswith(":train") for e in refused)
    assert AuditLog.for_config(config).verify() == []


def test_a_round_one_site_refuses_fails_instead_of_fitting_the_others(sites, tmp_path):
    """federation.min_sites = 2 and two sites, one of which refuses: no model from the other alone."""
    narrow = tmp_path / "narrow" / "node.toml"
    narrow.parent.mkdir()
    narrow.write_text(Path(sites[1]).read_text().replace('"measurement:RADFED:*", ', ""))   # target only
    with pytest.raises(RuntimeError, match=r"only 0 of 2 rounds had 2 site\(s\) answering.*round 1: 1, round 2: 1"):
        run_local([sites[0], narrow], logistic_spec("newton", rounds=2), tmp_path)
    spec = logistic_spec("newton", rounds=2)
    spec["federation"] = {"min_sites": 1}   # the researcher may accept fewer sites, explicitly
    result, _ = run_local([sites[0], narrow], spec, tmp_path)
    assert set(result["sites"]) == {"site0"} and result["evaluation_refusals"]


def test_data_path_refusals(sites, tmp_path):
    model = parse_model_spec(logistic_spec())
    config = load_config(sites[2])
    engine = open_engine(config.database_url)
    assert len(training_rows(engine, config, model).y) == 90
    strict = tmp_path / "strict.toml"
    strict.write_text(Path(sites[2]).read_text().replace("min_rows_model = 20", "min_rows_model = 500"))
    with pytest.raises(Refusal) as exc:
        training_rows(engine, load_config(strict), model)
    assert exc.value.code == "MIN_ROWS"
    closed = tmp_path / "closed.toml"
    closed.write_text(Path(sites[2]).read_text().split("[learning]")[0])
    with pytest.raises(Refusal) as exc:
        training_rows(engine, load_config(closed), model)
    assert exc.value.code == "NOT_ALLOWED" and "[learning]" in exc.value.message
    assert variable_key(model.variables["a"]) == "measurement:RADFED:feat_a"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(features=["a", "nope"]), "unknown variable 'nope'"),
    (lambda s: s["model"].update(type="mlp"), "newton is defined for the logistic model only"),
    (lambda s: s.update(target="a"), "cannot also be a feature"),
    (lambda s: s["training"].update(rounds=0), "training.rounds"),
    (lambda s: s["variables"].update(t={"kind": "condition", "codes": {"x": "RADFED:target_x"}}), "0/1 target"),
])
def test_bad_model_specs_name_the_field(change, message):
    spec = logistic_spec("newton")
    change(spec)
    with pytest.raises(ModelSpecError) as exc:
        parse_model_spec(spec)
    assert message in str(exc.value)


def test_model_store_round_trip(tmp_path):
    store = ModelStore(open_engine(tmp_path / "coord.sqlite"))
    arrays = [np.arange(3.0), np.eye(2)]
    model_id = store.add(name="m", spec={"a": 1}, spec_digest="d" * 64, arrays=arrays, result={"status": "ok"},
                         provenance={"requester": "r"}, flower_run_id="7", fab_hash="f" * 64)
    got = store.get(model_id)
    assert [a.tolist() for a in got["arrays"]] == [a.tolist() for a in arrays]
    assert got["provenance"] == {"requester": "r"} and store.list()[0]["model_id"] == model_id
    assert store.get("missing") is None


def test_zero_shot_beats_chance_on_held_out_diseases(tmp_path):
    """Patient encoder trained federatively on 14 diseases; the 6 held out are ranked by their
    descriptions alone.  Chance: top-5 of 20 candidates = 0.25; top-1 of the 6 held-out = 1/6."""
    tomls = [rare_site(tmp_path / f"rare{i}", f"rare{i}", 160, seed=21 + i) for i in range(2)]
    held = ["RD02", "RD05", "RD09", "RD12", "RD14", "RD18"]
    result, work = run_local(tomls, rare_spec(held, rounds=2), tmp_path)
    rates = result["pooled_rates"]
    assert result["pooled"]["unseen-n"] >= 60
    assert rates["unseen-top5"] >= 0.25 + 0.3, rates
    assert rates["unseen-only-top1"] >= 1 / 6 + 0.3, rates
    assert rates["seen-top1"] > 0.8, rates
    assert json.loads((work / "model_spec.json").read_text())["zero_shot"]["held_out"] == held


def test_train_cli_reports_bad_input_in_one_line(tmp_path):
    from click.testing import CliRunner

    from coordinator.cli import main

    runner = CliRunner()
    missing = runner.invoke(main, ["train", str(tmp_path / "nope.yaml"), "--home", str(tmp_path / "coord")])
    assert missing.exit_code == 2 and "error: cannot read model spec" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvariables: {a: {kind: age}, t: {kind: sex}}\nfeatures: [a]\ntarget: t\n")
    out = runner.invoke(main, ["train", str(bad), "--home", str(tmp_path / "coord")])
    assert out.exit_code == 2 and "target: logistic and mlp models need a 0/1 target" in out.output
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(logistic_spec()))
    out = runner.invoke(main, ["train", str(good), "--home", str(tmp_path / "coord")])
    assert out.exit_code != 0 and "no coordinator at" in out.output


def test_singular_newton_step_names_the_remedy(sites, tmp_path):
    spec = logistic_spec("newton", rounds=2)
    spec["variables"]["a2"] = spec["variables"]["a"]  # the same column twice: collinear
    spec["features"] = ["a", "a2", "b"]
    with pytest.raises(RuntimeError, match="training.l2 > 0"):
        run_local(sites, spec, tmp_path)
    spec["training"]["l2"] = 0.01
    result, _ = run_local(sites, spec, tmp_path)
    assert result["pooled"]["n"] == 370


def test_small_evaluation_groups_are_not_released(sites):
    from node.learn.data import suppress_small_groups

    config = load_config(sites[0])  # min_cell_count defaults to 5
    metrics = {"n": 50, "seen-n": 47, "seen-top1": 40, "unseen-n": 3, "unseen-top1": 1, "unseen-only-n": 3,
               "unseen-only-top1": 2}
    assert suppress_small_groups(metrics, config) == {"n": 50, "seen-n": 47, "seen-top1": 40}
