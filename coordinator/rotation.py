"""Site key rotation (``radfed coordinator rotate-site-key NAME``): a new bundle for one site.

Rotation replaces everything the site authenticates with: its Ed25519 signing key and its NATS
password.  The old public key is forgotten (answers signed with it no longer verify) and the old
password stops working at the bus on the ``nats.conf`` reload (nats-server re-checks connected clients
on reload and closes those whose credentials are gone).  No other site's entry, key or password is
touched, so the rest of the network keeps running.  The new bundle has the same layout as the
enrollment bundle (:meth:`coordinator.home.CoordinatorHome.enroll_site`).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from coordinator.commands import _home, home_option
from coordinator.home import Bundle, CoordinatorHome, HomeError


def rotate_site_key(home: CoordinatorHome, name: str, out_dir: str | Path) -> Bundle:
    """Revoke ``name``'s current credentials and enroll it afresh into ``out_dir/name``.

    Everything that can fail is checked before the old key is revoked (site enrolled, bundle folder
    free), so a refused rotation leaves the site working as it was.
    """
    site = home.store.site(name)
    if site is None or site["state"] != "enrolled":
        raise HomeError(f"no enrolled site {name!r} (enroll it with `radfed coordinator enroll-site`)")
    folder = Path(out_dir).expanduser().resolve() / name
    if folder.exists() and any(folder.iterdir()):
        raise HomeError(f"bundle folder {folder} already exists and is not empty: choose another --out")
    home.revoke_site(name)
    return home.enroll_site(name, out_dir)


@click.command("rotate-site-key")
@home_option
@click.argument("name")
@click.option("--out", "out_dir", default=None,
              help="Folder to write NAME/ bundle into (default bundles/rotated-YYYYMMDD-HHMMSS).")
def rotate_site_key_command(home, name, out_dir):
    """Give site NAME a new key pair and bus password; its old ones stop working, other sites are untouched."""
    h = _home(home)
    out_dir = out_dir or f"bundles/rotated-{time.strftime('%Y%m%d-%H%M%S')}"
    bundle = rotate_site_key(h, name, out_dir)
    click.echo(f"site {name}: new key {bundle.folder / 'site.pub'}; old key and bus password revoked")
    click.echo(f"  give {bundle.folder} to the site administrator; node side: merge node.toml, restart the agent")
