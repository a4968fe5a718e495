"""``radfed train SPEC``, ``radfed models [ID]``, ``radfed flower-register KEY.pub SITE``.

Run on the coordinator host (they use its home: the SuperLink's folder and the store).  Expected
failures print one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import json
import sys

import click

from cdm.learn.modelspec import ModelSpecError, load_model_spec

home_option = click.option("--home", default="radfed-coordinator", show_default=True, envvar="RADFED_COORDINATOR_HOME",
                           help="Coordinator folder (its SuperLink runs under HOME/flower).")


def _home(path: str):
    from coordinator.home import CoordinatorHome

    home = CoordinatorHome(path)
    if not home.exists():
        raise click.ClickException(f"no coordinator at {home.path}: run `radfed coordinator init --home {path}`")
    return home


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def render(model_id: str, result: dict) -> str:
    lines = [f"model {model_id}: {result['model']} ({result['strategy']}, {result['rounds']} rounds, "
             f"{len(result['sites'])} sites, {result['seconds']:.1f} s)"]
    losses = result.get("train_loss", {})
    if losses:
        first, last = min(losses, key=int), max(losses, key=int)
        lines.append(f"  training loss: round {first} {losses[first]:.4f} -> round {last} {losses[last]:.4f}")
    for site, metrics in sorted(result["sites"].items()):
        shown = {k: v for k, v in metrics.items() if k != "num-examples"}
        lines.append(f"  {site}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    lines.append("  pooled: " + ", ".join(f"{k}={v:.3f}" for k, v in result["pooled_rates"].items()))
    for reason in result.get("evaluation_refusals", []):
        lines.append(f"  refused evaluation: {reason}")
    return "\n".join(lines)


@click.command("train")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@home_option
@click.option("--timeout", type=float, help="Seconds to wait for the run (default: federation.timeout x rounds).")
@click.option("--requester", default="operator", show_default=True, help="Recorded in the model's provenance.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored model id and result as JSON.")
def train_command(spec_path, home, timeout, requester, as_json):
    """Train the model SPEC describes on the federation (Flower) and store it with its provenance."""
    from coordinator.learn.runner import train
    from coordinator.learn.store import ModelStore
    from coordinator.learn.superlink import FlowerError, FlowerLink

    try:
        model = load_model_spec(spec_path)
        h = _home(home)
        model_id, result = train(FlowerLink.for_home(h), ModelStore(h.store.engine), model, requester, timeout)
    except (ModelSpecError, FlowerError) as exc:
        _fail(str(exc))
    click.echo(json.dumps({"model_id": model_id, "result": result}, indent=1) if as_json else render(model_id, result))


@click.command("models")
@click.argument("model_id", required=False)
@home_option
def models_command(model_id, home):
    """List stored models, or show one model's provenance and evaluation."""
    from coordinator.learn.store import ModelStore

    store = ModelStore(_home(home).store.engine)
    if model_id is None:
        for row in store.list():
            click.echo(f"{row['model_id']}  {row['created_at']:%Y-%m-%d %H:%M}  {row['name']}  run {row['flower_run_id']}")
        return
    row = store.get(model_id)
    if row is None:
        _fail(f"no model {model_id}")
    shown = {k: v for k, v in row.items() if k != "arrays"}
    shown["parameter_shapes"] = [list(a.shape) for a in row["arrays"]]
    click.echo(json.dumps(shown, indent=1, default=str))


@click.command("flower-register")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False))
@click.argument("site")
@home_option
def register_command(public_key, site, home):
    """Admit SITE's Flower SuperNode by its public key (from `radfed-node flower-key`)."""
    from coordinator.learn.superlink import FlowerError, FlowerLink, register_supernode

    try:
        answer = register_supernode(FlowerLink.for_home(_home(home)), public_key, site)
    except FlowerError as exc:
        _fail(str(exc))
    click.echo(f"registered {site}: SuperNode {answer.get('node-id', '?')}")


LEARN_COMMANDS = {"train": train_command, "models": models_command, "flower-register": register_command}
