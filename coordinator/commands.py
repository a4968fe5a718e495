"""``radfed`` command groups: operator (``coordinator ...``) and researcher (``query``, ``jobs``, ``result``,
``sites``).  Expected failures print one ``error: ...`` line and exit with the error's code
(:func:`cdm.errors.exit_code_of`: 2 for bad input, configuration or an unreachable coordinator), never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import yaml

from cdm.cli_errors import ErrorReportingGroup
from cdm.errors import EXIT_PARTIAL, EXIT_USAGE, exit_code_of
from coordinator.client import Client, ClientError
from coordinator.home import CoordinatorHome, HomeError
from coordinator.report import render_job, render_jobs, render_sites
from coordinator.results import job_csv

DEFAULT_HOME = os.environ.get("RADFED_COORDINATOR_HOME", "radfed-coordinator")


def _home(path: str, must_exist: bool = True) -> CoordinatorHome:
    home = CoordinatorHome(path)
    if must_exist and not home.exists():
        raise HomeError(f"no coordinator at {home.path}: run `radfed coordinator init --home {path}`")
    return home


home_option = click.option("--home", default=DEFAULT_HOME, show_default=True, envvar="RADFED_COORDINATOR_HOME",
                           help="Coordinator folder (settings, keys, job store, NATS config).")


# ---------------------------------------------------------------------------- operator


@click.group("coordinator", cls=ErrorReportingGroup)
def coordinator_group() -> None:
    """Operate the coordinator: init, enroll sites and researchers, serve."""


@coordinator_group.command("init")
@home_option
@click.option("--nats-host")
@click.option("--nats-port", type=int)
@click.option("--api-host")
@click.option("--api-port", type=int)
@click.option("--public-nats-url", help="Bus URL written into site bundles (default: the listen address).")
@click.option("--database", help="Job store URL (default: HOME/coordinator.sqlite).")
@click.option("--jetstream/--no-jetstream", default=None,
              help="Queue requests for offline sites durably in JetStream (enroll sites afterwards).")
def init_command(home, nats_host, nats_port, api_host, api_port, public_nats_url, database, jetstream):
    """Create (or update) the coordinator home."""
    h = CoordinatorHome(home).init(nats_host=nats_host, nats_port=nats_port, api_host=api_host, api_port=api_port,
                                   public_nats_url=public_nats_url, database=database, jetstream=jetstream)
    click.echo(f"coordinator home {h.path}: bus {h.nats_url}, API {h.api_url}")


@coordinator_group.command("enroll-site")
@home_option
@click.argument("name")
@click.option("--out", "out_dir", default="bundles", show_default=True, help="Folder to write NAME/ bundle into.")
def enroll_site_command(home, name, out_dir):
    """Enroll a site: write its credentials bundle (key pair, NATS password, node.toml fragment)."""
    h = _home(home, must_exist=False)
    if not h.exists():
        h.init()
    bundle = h.enroll_site(name, out_dir)
    click.echo(f"site {name} enrolled; bundle in {bundle.folder} (give it to the site administrator securely)")
    click.echo(f"  node side: radfed-node --config {bundle.node_toml} serve")


@coordinator_group.command("tls-init")
@home_option
@click.option("--host", "hosts", multiple=True, help="Names/IPs sites use to reach the bus (default: the listen host).")
def tls_init_command(home, hosts):
    """Make a private CA and server certificate: the bus then speaks TLS (enroll sites afterwards)."""
    from coordinator.tlsinit import make_tls

    h = _home(home)
    files = make_tls(h.path / "tls", list(hosts) or [h.settings["nats_host"], "localhost"])
    h.write_nats_conf()
    click.echo(f"TLS on: bus is now {h.nats_url}; CA {files['ca']} goes into every new site bundle")


@coordinator_group.command("revoke-site")
@home_option
@click.argument("name")
def revoke_site_command(home, name):
    """Remove a site: its bus credentials stop working and its key is forgotten."""
    _home(home).revoke_site(name)
    click.echo(f"site {name} revoked")


@coordinator_group.command("add-researcher")
@home_option
@click.argument("name")
@click.option("--role", type=click.Choice(["researcher", "admin"]), default="researcher", show_default=True)
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True, max=3650),
              help="The token stops working after this many days (default: never).")
def add_researcher_command(home, name, role, expires_in_days):
    """Create a researcher (or re-issue a revoked one) and print their API token (shown once)."""
    import datetime as dt

    from coordinator.store import utcnow

    h = _home(home, must_exist=False)
    if not h.exists():
        h.init()
    expires = utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None
    token = h.store.add_researcher(name, role, expires)
    h.store.audit("operator (host)", "researcher.add", "ok", name,
                  f"role {role}, expires {expires.isoformat(timespec='seconds') if expires else 'never'}")
    click.echo(token)
    until = f", token expires {expires.isoformat(sep=' ', timespec='minutes')} UTC" if expires else ""
    click.echo(f"researcher {name} ({role}) created{until}; use: export RADFED_URL={h.api_url} "
               "RADFED_TOKEN=<token above>; console: " + f"{h.api_url}/console/", err=True)


@coordinator_group.command("revoke-researcher")
@home_option
@click.argument("name")
def revoke_researcher_command(home, name):
    """Revoke a researcher's token: the API and the console refuse it at once."""
    h = _home(home)
    h.store.revoke_researcher(name)
    h.store.audit("operator (host)", "researcher.revoke", "ok", name)
    click.echo(f"token of {name} revoked")


@coordinator_group.command("audit")
@home_option
@click.option("--limit", default=50, show_default=True)
@click.option("--action", help="Only this action (e.g. job.submit, console.sign_in, researcher.revoke).")
@click.option("--verify", is_flag=True, help="Check the hash chain; exit 1 if an entry was edited, removed or reordered.")
@click.option("--json", "as_json", is_flag=True)
def audit_command(home, limit, action, verify, as_json):
    """The coordinator's audit trail: sign-ins, submissions, enrolments, revocations, refusals."""
    h = _home(home)
    if verify:
        problems = h.store.verify_audit()
        for problem in problems:
            click.echo(problem)
        click.echo("audit chain intact" if not problems else f"{len(problems)} problem(s)")
        sys.exit(1 if problems else 0)
    entries = h.store.audit_entries(limit, action)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    from coordinator.report import grid

    click.echo(grid(["#", "time (UTC)", "who", "action", "target", "outcome", "detail"],
                      [[str(e["seq"]), e["time"].isoformat(sep=" ", timespec="seconds"), e["actor"], e["action"],
                        e["target"] or "", e["outcome"], (e["detail"] or "")[:80]] for e in entries]))


@coordinator_group.command("serve")
@home_option
@click.option("--api-host")
@click.option("--api-port", type=int)
@click.option("--external-nats", help="Use this NATS URL instead of starting nats-server.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="coordinator.toml: its settings are applied to its home first (replaces --home).")
@click.option("--flower", is_flag=True, help="Also start and supervise the Flower SuperLink (federated training).")
def serve_command(home, api_host, api_port, external_nats, config_path, flower):
    """Run the coordinator: nats-server with per-site permissions, and the HTTP API."""
    from coordinator.server import serve

    if config_path:  # issue 10: deployments run on coordinator.toml (coordinator/config.py)
        from coordinator.config import apply, load_coordinator_config

        config = load_coordinator_config(config_path)
        h, _ = apply(config)
        external_nats = external_nats or config.external_nats_url
        return serve(h, api_host, api_port, external_nats, flower)
    h = _home(home, must_exist=False)
    if not h.exists():
        h.init()
    serve(h, api_host, api_port, external_nats, flower)


# ---------------------------------------------------------------------------- researcher


def client_options(f):
    f = click.option("--url", envvar="RADFED_URL", help="Coordinator API URL (env RADFED_URL).")(f)
    f = click.option("--token", envvar="RADFED_TOKEN", help="API token (env RADFED_TOKEN).")(f)
    return f


def load_spec(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"{path} is not YAML/JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ClientError(f"{path}: a spec is a mapping with cohort and analysis")
    return spec


@click.group("query", cls=ErrorReportingGroup)
def query_group() -> None:
    """Run federated query specs."""


@query_group.command("run")
@click.argument("spec_path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--atlas", "atlas_path", type=click.Path(exists=True, dir_okay=False),
              help="An ATLAS cohort definition (Circe JSON) as the cohort, instead of SPEC.")
@click.option("--analysis", help="With --atlas: the analysis (YAML/JSON inline or a file; default a count).")
@client_options
@click.option("--site", "sites", multiple=True, help="Only these sites (repeatable; default all enrolled).")
@click.option("--quorum", type=int, help="Minimum number of sites that must answer.")
@click.option("--timeout", type=float, help="Seconds to wait for each site.")
@click.option("--hold-offline", type=float, help="Seconds to hold the job for offline sites to come back.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole job as JSON.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write pooled + per-site table as CSV.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write PNG plots (KM curves, forest plots...) here.")
def query_run(spec_path, atlas_path, analysis, url, token, sites, quorum, timeout, hold_offline, as_json, csv_out,
              plots_dir):
    """Run SPEC (or an ATLAS definition, --atlas) across the network; print pooled and per-site
    results side by side.  An ATLAS definition that does not translate exactly is refused here,
    before anything is sent (exit 2, each problem with its JSON path)."""
    if bool(spec_path) == bool(atlas_path):
        raise click.UsageError("give SPEC or --atlas DEFINITION (one of them)")
    spec = _atlas_spec(atlas_path, analysis) if atlas_path else load_spec(spec_path)
    client = Client(url, token)
    job = client.run(spec, list(sites) or None, quorum, timeout, hold_offline=hold_offline)
    _show(job, as_json, csv_out, plots_dir)
    if job["status"] == "failed":
        sys.exit(1)


def _atlas_spec(path: str, analysis: str | None) -> dict:
    from cdm.atlas.refusals import Untranslatable
    from cdm.atlas.translate import spec_from_file

    try:
        return spec_from_file(path, analysis)
    except Untranslatable as exc:
        click.echo(exc.report(path, "nothing was sent"), err=True)
        sys.exit(EXIT_USAGE)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None


@click.group("atlas", cls=ErrorReportingGroup)
def atlas_group() -> None:
    """OHDSI ATLAS cohort definitions (Circe JSON)."""


@atlas_group.command("check")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Translated and refused definitions with every problem.")
def atlas_check(folder, as_json):
    """How many definitions in FOLDER translate exactly, and the reasons for the rest, grouped
    (exit 3 when some are refused)."""
    from cdm.atlas.check import check_folder

    coverage = check_folder(folder)
    if not coverage.total:
        raise click.UsageError(f"no *.json definitions under {folder} (unpack an archive of them first)")
    if as_json:
        click.echo(json.dumps({"total": coverage.total, "translated": coverage.translated,
                               "refused": {k: [{"path": p, "reason": r} for p, r in v]
                                           for k, v in coverage.refused.items()}}, indent=2))
    else:
        click.echo(coverage.text())
    sys.exit(EXIT_PARTIAL if coverage.refused else 0)


@query_group.command("dry-run")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@client_options
@click.option("--site", "sites", multiple=True, help="Only these sites (repeatable; default all enrolled).")
@click.option("--sql", is_flag=True, help="Also print the SQL each site compiled (with its own concept ids).")
@click.option("--json", "as_json", is_flag=True)
def query_dry_run(spec_path, url, token, sites, sql, as_json):
    """Ask each site what it would run for SPEC and whether its policy allows it; nothing is released."""
    from coordinator.report import render_plan

    plan = Client(url, token).plan(load_spec(spec_path), list(sites) or None)
    click.echo(json.dumps(plan, indent=2) if as_json else render_plan(plan, sql))
    refused = [s for s in plan["sites"] if s["status"] != "ok" or not (s.get("plan") or {}).get("allowed")]
    sys.exit(3 if refused else 0)


def _show(job: dict, as_json: bool, csv_out: str | None, plots_dir: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(job, indent=2, default=str))
    else:
        click.echo(render_job(job))
    if csv_out:
        Path(csv_out).write_text(job_csv(job), encoding="utf-8")
        click.echo(f"CSV written to {csv_out}", err=True)
    if plots_dir:  # KM curves with risk tables, forest plots of HR/OR, count bars (coordinator/plots.py)
        from coordinator.plots import plot_job, slug

        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        kind = (job.get("pooled") or {}).get("type", "result")
        written = plot_job(job, f"{kind} {job['job_id'][:8]}", Path(plots_dir) / f"{slug(kind)}-{job['job_id'][:8]}.png")
        click.echo(f"plot written to {written}" if written else "no plot for this result", err=True)


@click.command("jobs")
@client_options
@click.option("--all", "all_", is_flag=True, help="Everyone's jobs (admin).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_command(url, token, all_, limit, as_json):
    """Your recent jobs."""
    try:
        jobs = Client(url, token).jobs(all_, limit)
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_of(exc))
    click.echo(json.dumps(jobs, indent=2, default=str) if as_json else render_jobs(jobs))


@click.command("result")
@click.argument("job_id")
@client_options
@click.option("--wait", default=0.0, help="Seconds to wait for a running job.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False))
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write PNG plots here.")
@click.option("--model-out", type=click.Path(dir_okay=False),
              help="Write a pooled Cox fit as a radfed.cox-model/1 file for `radfed-node forecast`.")
def result_command(job_id, url, token, wait, as_json, csv_out, plots_dir, model_out):
    """A job's pooled and per-site results."""
    try:
        job = Client(url, token).job(job_id, wait)
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_of(exc))
    _show(job, as_json, csv_out, plots_dir)
    if model_out:  # publish the fitted model to the sites (docs/analysis-rounds.md, "Published models")
        from cdm.analyses.cox import forecast_model
        from coordinator.stats import StatsError

        try:
            document = forecast_model(job.get("pooled") or {}, job.get("spec") or {})
        except StatsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        Path(model_out).write_text(json.dumps(document, indent=2), encoding="utf-8")
        click.echo(f"model written to {model_out}", err=True)


@click.command("sites")
@client_options
@click.option("--json", "as_json", is_flag=True)
def sites_command(url, token, as_json):
    """Enrolled sites: online or not, version, last seen."""
    try:
        sites = Client(url, token).sites()
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_of(exc))
    click.echo(json.dumps(sites, indent=2) if as_json else render_sites(sites))


COMMANDS = {"coordinator": coordinator_group, "query": query_group, "atlas": atlas_group, "jobs": jobs_command,
            "result": result_command, "sites": sites_command}
