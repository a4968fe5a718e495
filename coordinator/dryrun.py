"""The dry run: what a spec would ask of each site, before anything is released.

For a multi-round analysis the coordinator runs its own algorithm (``coordinator.stats``) until the
first round it would send, and stops there: the request shown is the real first round, not a copy
of it.  Each chosen site then gets that request as a *dry run* (the spec under ``plan``, see
node/plan.py) and answers with its verdict (allowed, refused and why, approval by hand) and the SQL
its CDM would run, compiled with its own vocabulary.  A site that is offline is named as such.
"""

from __future__ import annotations

import asyncio
import uuid

from cdm.analyses import KINDS
from cdm.errors import RadfedError
from cdm.spec import parse_spec
from cdm.wire import CLOCK_SKEW_SECONDS, make_request, spec_hash
from coordinator import stats
from coordinator.service import SubmitError, split_spec


class _FirstRound(RadfedError):
    def __init__(self, analysis: dict):
        self.analysis = analysis


def first_round(analysis: dict) -> dict:
    """The node analysis of the first round the coordinator would send for ``analysis``."""
    if analysis.get("type") not in stats.ANALYSES:
        return analysis

    def ask(node_analysis: dict):
        raise _FirstRound(node_analysis)

    try:
        stats.run_analysis(analysis, ask)
    except _FirstRound as first:
        return first.analysis
    raise SubmitError(f"{analysis.get('type')}: the algorithm asks the sites nothing")


async def dry_run(coordinator, researcher: str, spec: dict, sites: list[str] | None, timeout: float) -> dict:
    node_spec, options = split_spec(spec)
    parse_spec(node_spec)
    chosen = coordinator.chosen_sites(sites, options)
    analysis = node_spec["analysis"]
    try:
        node_analysis = await asyncio.to_thread(first_round, analysis)
    except stats.StatsError as exc:
        raise SubmitError(str(exc)) from None
    first = {**node_spec, "analysis": node_analysis}
    keys = coordinator.store.public_keys()
    online = {s["site"]: s for s in coordinator.sites_view()}

    async def ask(site: str):
        request = {k: v for k, v in make_request(first, researcher, "dry-run-" + str(uuid.uuid4()), site=site,
                                                      ttl=timeout + CLOCK_SKEW_SECONDS).items() if k != "spec"}
        request["plan"] = first
        return await coordinator.federation.ask_site(site, request, keys.get(site), timeout)

    replies = await asyncio.gather(*(ask(site) for site in chosen))
    per_site = []
    for reply in replies:
        view = online.get(reply.site, {})
        per_site.append({"site": reply.site, "online": view.get("online"), "version": view.get("version"),
                         "status": reply.status, "code": reply.code, "message": reply.message,
                         "plan": reply.result if reply.status == "ok" else None})
    return {"analysis": analysis.get("type"), "spec_hash": spec_hash(node_spec),
            "rounds": KINDS[kind].rounds if (kind := analysis.get("type")) in KINDS else "1 round", "first_round": node_analysis,
            "quorum": options.get("quorum", 1), "sites": per_site}
