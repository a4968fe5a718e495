"""Driving one multi-round analysis: the ``ask`` callable, a fixed set of sites, and the round count.

Every algorithm in :mod:`coordinator.stats` is a function of the sums that sites release.  A model
fitted over several rounds is only the pooled model if *the same sites* answer every round: the
first round fixes the set, and a later round missing one of them stops the analysis with a clear
error (rather than silently fitting a different data set).  A site that joins only later is ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cdm.errors import RadfedError


class StatsError(RadfedError, ValueError):
    """A multi-round analysis cannot give an exact answer (bad analysis, suppressed sums, lost site)."""

    http_status = 422


class Session:
    """``ask`` with bookkeeping: ``session.round(analysis) -> {site: result}`` over fixed sites."""

    def __init__(self, ask: Callable[[dict], list[dict]]):
        self._ask = ask
        self.rounds = 0
        self.sites: list[str] | None = None

    @property
    def secure(self) -> bool:
        """Whether rounds are secure sums (one pooled answer, never a site's own; coordinator/secure.py)."""
        return bool(getattr(self._ask, "secure", None))

    def round(self, analysis: dict, lock: dict | None = None, grid: list | None = None) -> dict[str, dict]:
        """One round.  ``lock`` (the pooled fits so far, :mod:`cdm.newton`) and ``grid`` (the pooled
        event times a secure Cox round is evaluated at) go to an ``ask`` that carries them to the
        nodes (``ask.carries_extra``); the nodes check the round's ``beta`` against the lock."""
        extra = {k: v for k, v in (("lock", lock), ("grid", grid)) if v is not None}
        answers = self._ask(analysis, extra) if getattr(self._ask, "carries_extra", False) else self._ask(analysis)
        self.rounds += 1
        by_site: dict[str, dict] = {}
        for i, answer in enumerate(answers):
            result = dict(answer)
            site = str(result.pop("_site", f"site-{i}"))
            by_site[site] = result
        if not by_site:
            raise StatsError(f"no site answered the {analysis.get('type')} round")
        if self.sites is None:
            self.sites = sorted(by_site)
        else:
            missing = sorted(set(self.sites) - set(by_site))
            if missing:
                raise StatsError(f"round {self.rounds} ({analysis.get('type')}): {', '.join(missing)} answered an "
                                 "earlier round but not this one; the pooled fit would mix data sets")
        return {site: by_site[site] for site in self.sites}


def need(result: dict, key: str, site: str, what: str):
    """``result[key]``, or a :class:`StatsError` naming the site when it is missing or suppressed."""
    value = result.get(key)
    if value is None:
        raise StatsError(f"{site}: {what} result has no {key!r} (suppressed by the site's policy?); "
                         "an exact pooled answer needs it")
    return value


def array(result: dict, key: str, site: str, what: str, shape: tuple | None = None) -> np.ndarray:
    """``result[key]`` as a float array, refusing suppressed (null) entries and wrong shapes."""
    value = need(result, key, site, what)
    try:
        out = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise StatsError(f"{site}: {what} {key!r} has suppressed or non-numeric entries") from None
    if shape is not None and out.shape != shape:
        raise StatsError(f"{site}: {what} {key!r} has shape {out.shape}, expected {shape}")
    if not np.all(np.isfinite(out)):
        raise StatsError(f"{site}: {what} {key!r} has non-finite entries")
    return out
