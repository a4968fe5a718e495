"""``radfed-node concordance`` and ``radfed-node forecast``: one patient, for the site's own clinicians.

Both read this site's CDM only, print to the terminal, and are written to the audit log as *local*
requests (who ran it, which person, how many rows were read); nothing leaves the site.

**concordance** — the patient's imaging assessments and the ctDNA draws next to them:

* an imaging assessment is an ``episode`` row whose ``episode_concept_id`` or
  ``episode_object_concept_id`` is a disease-status concept (RADFED ``progression`` /
  ``stable_disease`` / ``response``, or the mCODE SNOMED values 271299001 / 359746009 / 268910001 the
  FHIR ingest maps "Cancer disease status" to — see node/fhir_profile.py); its call is
  "progression" or not;
* each is paired with the nearest ``ctdna_result`` draw with a ``detected`` value within
  ``--window-days`` (default 30; on a tie the earlier draw); the ctDNA call is ``detected``;
* the posterior probability of true progression is Bayes' rule with the two tests conditionally
  independent (:func:`cdm.rounds.posterior_progression`), and its band as in the federated
  ``concordance`` round.  The default sensitivities/specificities and prior are illustrative
  placeholders: a site should pass its own.

**forecast** — ``S(t | x)`` of a published time-varying Cox model (:mod:`cdm.published_model`) for
the patient's current covariate values: every model variable evaluated as of ``--at`` (default
today), event variables taking their latest value on or before that day (window ``end: 0``,
``reduce: last``); horizons are days from the start of follow-up, as the model's baseline.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
import uuid

import click
import numpy as np
from sqlalchemy import BigInteger, Date, literal, or_, select

from cdm import rounds
from cdm import spec as S
from cdm.compiler import Context, Resolver, variable_columns
from cdm.db import open_engine
from cdm.published_model import ModelError, PublishedCoxModel, load_model
from cdm.schema import tables
from node.audit import AuditLog

T = tables
STATUS_CODES = {"progression": ["RADFED:progression", "SNOMED:271299001"],
                "stable": ["RADFED:stable_disease", "SNOMED:359746009"],
                "response": ["RADFED:response", "SNOMED:268910001"]}
DEFAULT_HORIZONS = (90, 180, 365)


def _config(ctx):
    return ctx.find_root().obj


def find_person(engine, ident: str) -> tuple[int, str | None]:
    """(person_id, MRN) of ``ident``: a person_source_value (MRN) first, else a person_id."""
    person = T["person"]
    with engine.connect() as conn:
        row = conn.execute(select(person.c.person_id, person.c.person_source_value)
                           .where(person.c.person_source_value == ident)).first()
        if row is None and ident.isdigit() and len(ident) <= 18:
            row = conn.execute(select(person.c.person_id, person.c.person_source_value)
                               .where(person.c.person_id == int(ident))).first()
    if row is None:
        raise click.ClickException(f"no person {ident!r} at this site (give a person_id or an MRN)")
    return int(row[0]), row[1]


def _audit(config, command: str, person_id: int, rows_read: int) -> None:
    AuditLog.for_config(config).append(
        request_id=str(uuid.uuid4()), requester=f"local:{getpass.getuser()}", spec_hash=None, decision="local",
        code=None, rows_touched=rows_read, released=None, local_command=command, person_id=person_id)


# -- concordance -----------------------------------------------------------------------------------


def assessments(engine, person_id: int, window_days: int, params: tuple, band: tuple[float, float]) -> list[dict]:
    """The patient's imaging assessments, each paired with its nearest ctDNA draw (module doc)."""
    resolver = Resolver(engine)
    status_ids = {status: set(resolver.ids(codes)) for status, codes in STATUS_CODES.items()}
    every = sorted(set().union(*status_ids.values()))
    e, c = T["episode"], T["ctdna_result"]
    with engine.connect() as conn:
        episodes = conn.execute(
            select(e.c.episode_start_date, e.c.episode_concept_id, e.c.episode_object_concept_id)
            .where(e.c.person_id == person_id, or_(e.c.episode_concept_id.in_(every), e.c.episode_object_concept_id.in_(every)))
            .order_by(e.c.episode_start_date, e.c.episode_id)).all()
        draws = conn.execute(select(c.c.result_date, c.c.detected)
                             .where(c.c.person_id == person_id, c.c.detected.isnot(None))
                             .order_by(c.c.result_date, c.c.ctdna_result_id)).all()
    out = []
    for day, concept, obj in episodes:
        status = next(s for s in ("progression", "response", "stable") if {concept, obj} & status_ids[s])
        near = [(abs((d - day).days), d, bool(det)) for d, det in draws if abs((d - day).days) <= window_days]
        row = {"date": day.isoformat(), "imaging": status, "imaging_progression": status == "progression",
               "ctdna_date": None, "ctdna_detected": None, "posterior": None, "band": "no ctDNA draw in window"}
        if near:
            _, d, detected = min(near, key=lambda x: (x[0], x[1]))
            posterior = float(rounds.posterior_progression([row["imaging_progression"]], [detected], *params)[0])
            row.update(ctdna_date=d.isoformat(), ctdna_detected=detected, posterior=posterior,
                       band="likely_progression" if posterior >= band[1] else
                       "likely_response" if posterior <= band[0] else "indeterminate")
        out.append(row)
    return out


def _probability(ctx, param, value):
    if not 0 < value < 1:
        raise click.BadParameter("must be strictly between 0 and 1")
    return value


@click.command("concordance")
@click.option("--person", "ident", required=True, help="person_id or MRN (person_source_value).")
@click.option("--imaging-sens", default=0.80, show_default=True, type=float, callback=_probability)
@click.option("--imaging-spec", default=0.90, show_default=True, type=float, callback=_probability)
@click.option("--ctdna-sens", default=0.70, show_default=True, type=float, callback=_probability)
@click.option("--ctdna-spec", default=0.95, show_default=True, type=float, callback=_probability)
@click.option("--prior", default=0.30, show_default=True, type=float, callback=_probability,
              help="Prior probability of true progression at an assessment.")
@click.option("--band", nargs=2, type=float, default=(0.2, 0.8), show_default=True,
              help="Posterior <= LO is likely response, >= HI likely progression.")
@click.option("--window-days", default=30, show_default=True, type=click.IntRange(0, 3660),
              help="Pair an imaging assessment with a ctDNA draw at most this many days away.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def concordance_command(ctx, ident, imaging_sens, imaging_spec, ctdna_sens, ctdna_spec, prior, band, window_days, as_json):
    """One patient's imaging and ctDNA progression calls, paired, with the posterior of progression."""
    if not 0 <= band[0] < band[1] <= 1:
        raise click.BadParameter("band must be LO HI with 0 <= LO < HI <= 1", param_hint="--band")
    config = _config(ctx)
    engine = open_engine(config.database_url)
    person_id, mrn = find_person(engine, ident)
    rows = assessments(engine, person_id, window_days, (imaging_sens, imaging_spec, ctdna_sens, ctdna_spec, prior), band)
    _audit(config, "concordance", person_id, len(rows))
    if as_json:
        click.echo(json.dumps({"person_id": person_id, "mrn": mrn, "window_days": window_days, "band": list(band),
                               "parameters": {"imaging_sens": imaging_sens, "imaging_spec": imaging_spec,
                                              "ctdna_sens": ctdna_sens, "ctdna_spec": ctdna_spec, "prior": prior},
                               "assessments": rows}, indent=2))
        return
    click.echo(f"person {person_id} ({mrn or 'no MRN'}): {len(rows)} imaging assessment(s), "
               f"ctDNA paired within {window_days} days")
    click.echo(f"{'date':<11} {'imaging':<12} {'ctDNA':<28} {'posterior':>9}  band")
    for r in rows:
        ctdna = "—" if r["ctdna_date"] is None else \
            f"{'detected' if r['ctdna_detected'] else 'not detected'} ({r['ctdna_date']})"
        posterior = "—" if r["posterior"] is None else f"{r['posterior']:.3f}"
        click.echo(f"{r['date']:<11} {r['imaging']:<12} {ctdna:<28} {posterior:>9}  {r['band']}")


# -- forecast --------------------------------------------------------------------------------------


def _as_of(var):
    """The variable evaluated on the day of the forecast: latest value on or before it."""
    fields = type(var).model_fields
    update = {}
    if "window" in fields:
        update["window"] = S.Window(end=0)
    if "reduce" in fields and not (var.kind == "variant" and var.field == "presence"):
        update["reduce"] = "last"
    return var.model_copy(update=update)


def current_values(engine, person_id: int, model: PublishedCoxModel, at: dt.date, site: str) -> dict:
    """Each covariate's value for the person as of ``at`` (None when the person has none)."""
    person = T["person"]
    ctx = Context(literal(person_id, BigInteger), literal(at, Date), person)
    resolver = Resolver(engine)
    cols, decoders = variable_columns([_as_of(model.variables[n]) for n in model.covariates], ctx, resolver, site)
    with engine.connect() as conn:
        row = conn.execute(select(*cols).select_from(person).where(person.c.person_id == person_id)).first()
    return {name: decode(row[i]) for i, (name, decode) in enumerate(zip(model.covariates, decoders))}


def survival_at(times: np.ndarray, survival: np.ndarray, horizon: float) -> float | None:
    """The step function's value at ``horizon`` (1 before the first time; None past the last)."""
    if horizon > times[-1]:
        return None
    k = int(np.searchsorted(times, horizon, side="right")) - 1
    return 1.0 if k < 0 else float(survival[k])


def _plot(path: str, times, survival, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(np.concatenate([[0.0], times]), np.concatenate([[1.0], survival]), where="post")
    ax.set(xlabel="days from start of follow-up", ylabel="S(t | x)", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.command("forecast")
@click.option("--person", "ident", required=True, help="person_id or MRN (person_source_value).")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A published Cox model (radfed.cox-model/1 JSON).")
@click.option("--at", "at", type=click.DateTime(formats=["%Y-%m-%d"]), help="Covariates as of this day (default today).")
@click.option("--horizon", "horizons", multiple=True, type=click.FloatRange(min=0),
              help="Days from start of follow-up (repeatable; default 90, 180, 365).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the survival curve as PNG.")
@click.pass_context
def forecast_command(ctx, ident, model_path, at, horizons, as_json, plot_path):
    """The patient's survival curve under a published Cox model, at their current covariates."""
    try:
        model = load_model(model_path)
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    config = _config(ctx)
    engine = open_engine(config.database_url)
    person_id, mrn = find_person(engine, ident)
    day = at.date() if at else dt.date.today()
    values = current_values(engine, person_id, model, day, config.site_name)
    _audit(config, "forecast", person_id, 1)
    missing = [name for name, v in values.items() if v is None]
    if missing:
        click.echo(f"error: person {person_id} has no value on or before {day} for {', '.join(missing)}; "
                   "the model cannot be applied", err=True)
        sys.exit(1)
    times, survival = rounds.cox_survival(model.baseline.times, model.baseline.cumhaz, model.beta,
                                          [values[c] for c in model.covariates])
    rows = [{"days": h, "survival": survival_at(times, survival, h)} for h in (horizons or DEFAULT_HORIZONS)]
    if plot_path:
        _plot(plot_path, times, survival, f"{model.name}: person {person_id}")
    if as_json:
        click.echo(json.dumps({"person_id": person_id, "mrn": mrn, "as_of": day.isoformat(), "model": model.name,
                               "covariates": values, "linear_predictor": float(np.dot(model.beta, list(values.values()))),
                               "horizons": rows, "last_time": float(times[-1])}, indent=2))
        return
    click.echo(f"person {person_id} ({mrn or 'no MRN'}), {model.name}, covariates as of {day}:")
    for name, value in values.items():
        click.echo(f"  {name:<20} {value:>10.4g}   (coef {model.coef[name]:+.4g})")
    for r in rows:
        shown = "beyond the model's follow-up" if r["survival"] is None else f"{r['survival']:.3f}"
        click.echo(f"  S({r['days']:g} days) = {shown}")
    if plot_path:
        click.echo(f"curve written to {plot_path}")
