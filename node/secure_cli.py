"""``radfed-node secure``: the peer keys this node trusts for secure aggregation (node/secure.py).

``peers`` lists each peer site with the fingerprint of the Ed25519 key its key certificates must be
signed by, and where that trust comes from (``[secure.peers]`` in node.toml, or pinned on first use):
site administrators compare fingerprints with each other out of band, as with SSH host keys, which
turns a first-use pin into a verified one.  ``forget SITE`` drops a first-use pin (after that peer's
key was rotated): its next certificate is pinned afresh.  A running node reads its pins once per peer;
restart it after ``forget``.
"""

from __future__ import annotations

import json

import click
from sqlalchemy import delete, select

from cdm.wire import key_fingerprint
from node import secure


@click.group("secure")
def secure_group():
    """Peer keys for secure aggregation ([secure] in node.toml)."""


def _config(ctx):
    return ctx.find_root().obj


@secure_group.command("peers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def peers_command(ctx, as_json):
    """The peer sites this node trusts a signing key for, with its fingerprint."""
    from node.state import secure_peer_keys, state_engine

    config = _config(ctx)
    rows = {site: {"site": site, "fingerprint": key_fingerprint(str(key).strip()), "source": "node.toml",
                   "pinned_at": None} for site, key in secure.settings(config)["peers"].items()}
    with state_engine(config).connect() as conn:
        for r in conn.execute(select(secure_peer_keys)).mappings():
            rows.setdefault(r["site"], {"site": r["site"], "fingerprint": key_fingerprint(r["signing_key"]),
                                        "source": "first use", "pinned_at": r["pinned_at"].isoformat(timespec="seconds")})
    out = [rows[s] for s in sorted(rows)]
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if not out:
        click.echo("no peer met yet (trust = " + secure.settings(config)["trust"] + ")")
    for r in out:
        click.echo(f"{r['site']:<24} {r['fingerprint']}  {r['source']}" + (f" {r['pinned_at']}" if r["pinned_at"] else ""))


@secure_group.command("forget")
@click.argument("site")
@click.pass_context
def forget_command(ctx, site):
    """Drop SITE's first-use pin: its next key certificate is pinned afresh (after a key rotation)."""
    from node.state import secure_peer_keys, state_engine

    engine = state_engine(_config(ctx))
    with engine.begin() as conn:
        removed = conn.execute(delete(secure_peer_keys).where(secure_peer_keys.c.site == site)).rowcount
    secure.forget_pin(engine, site)
    if not removed:
        raise click.UsageError(f"no first-use pin for {site!r} (see `radfed-node secure peers`)")
    click.echo(f"{site}: pin dropped; restart the node so that it pins {site}'s next key certificate")
