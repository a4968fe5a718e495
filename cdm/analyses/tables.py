"""The table-shaped pooled record of a one-round analysis, the same for every kind, that the API
returns and the CLI prints::

    {"type": "crosstab", "columns": ["subtype"], "sites": ["site-a", ...],
     "rows": [{"key": ["PFA"], "pooled": {"n": 12, "complete": false, "suppressed_at": ["site-c"]},
               "per_site": {"site-a": {"n": 7}, "site-c": {"n": null, "suppressed": true}}}]}

Sums are exact integers.  A cell a site suppressed is never counted as zero: it stays ``null`` for
that site, and the pooled cell says it is incomplete (a lower bound) and where the suppression was.
"""

from __future__ import annotations

from cdm.errors import RadfedError


class AggregationError(RadfedError, ValueError):
    """A site's result does not have the shape its analysis type promises."""


def count(value):
    """A site's released count: an int, or None when the site suppressed it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AggregationError(f"count is not a number: {value!r}")
    return int(value)


def cell(n) -> dict:
    return {"n": None, "suppressed": True} if n is None else {"n": n}


def pool_counts(per_site: dict[str, int | None]) -> dict:
    known = [n for n in per_site.values() if n is not None]
    suppressed_at = sorted(s for s, n in per_site.items() if n is None)
    return {"n": sum(known) if known else None, "complete": not suppressed_at, "suppressed_at": suppressed_at}


def count_rows(per_key: dict, keys) -> list[dict]:
    """One table row per key: the pooled count and each site's cell."""
    return [{"key": list(key), "pooled": pool_counts(per_key[key]),
             "per_site": {s: cell(n) for s, n in sorted(per_key[key].items())}} for key in keys]
