"""The coordinator's home folder: settings, keys, the job store, the NATS config, enrollment.

Layout (created by ``radfed coordinator init`` or on first use)::

    HOME/settings.json      bus and API addresses (what enrollment bundles point sites at)
    HOME/coordinator.key    the coordinator's Ed25519 key: it signs every request it sends to sites
    HOME/nats.password      the coordinator's own NATS password (0600)
    HOME/nats.conf          generated from the enrolled sites (bcrypt hashes, per-site permissions)
    HOME/coordinator.sqlite the job store (or settings.json "database": a PostgreSQL URL)
    HOME/tls/               optional server.pem / server.key / ca.pem for TLS on the bus

Enrolling a site writes a *bundle* folder for the site administrator: the site's Ed25519 key pair,
its NATS password, the coordinator's public key and a ``node.toml`` fragment that uses them.  The
coordinator keeps only the site's public key and a bcrypt hash of the password.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cdm.errors import BadInput
from cdm.wire import (
    Signer,
    generate_key,
    heartbeat_subject,
    key_fingerprint,
    load_private_key,
    private_key_pem,
    public_key_text,
    request_subject,
    valid_site_name,
)
from coordinator import natsconf
from coordinator.store import Store, StoreError

DEFAULTS = {"nats_host": "127.0.0.1", "nats_port": 4222, "api_host": "127.0.0.1", "api_port": 8750,
            "public_nats_url": None, "public_api_url": None, "database": None, "jetstream": False}


class HomeError(BadInput, ValueError):
    """The coordinator home is missing, unreadable or asked something impossible."""


def _write_secret(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


@dataclass
class Bundle:
    site: str
    folder: Path
    node_toml: Path


class CoordinatorHome:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        self._store: Store | None = None

    # ------------------------------------------------------------------ settings

    @property
    def settings_path(self) -> Path:
        return self.path / "settings.json"

    def exists(self) -> bool:
        return self.settings_path.exists()

    def init(self, **overrides) -> "CoordinatorHome":
        """Create the home (idempotent); ``overrides`` update settings.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        settings = dict(DEFAULTS)
        if self.exists():
            settings.update(self.settings)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        self.settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        if not (self.path / "coordinator.key").exists():
            _write_secret(self.path / "coordinator.key", private_key_pem(generate_key()))
        if not (self.path / "nats.password").exists():
            _write_secret(self.path / "nats.password", secrets.token_urlsafe(24))
        self.store  # create the job store
        self.write_nats_conf()
        return self

    @property
    def settings(self) -> dict:
        try:
            return {**DEFAULTS, **json.loads(self.settings_path.read_text(encoding="utf-8"))}
        except FileNotFoundError:
            raise HomeError(f"no coordinator at {self.path}: run `radfed coordinator init --home {self.path}`") from None
        except json.JSONDecodeError as exc:
            raise HomeError(f"{self.settings_path} is not valid JSON: {exc}") from None

    @property
    def nats_url(self) -> str:
        s = self.settings
        scheme = "tls" if self.tls_files() else "nats"
        return f"{scheme}://{s['nats_host']}:{s['nats_port']}"

    @property
    def public_nats_url(self) -> str:
        return self.settings.get("public_nats_url") or self.nats_url

    @property
    def api_url(self) -> str:
        s = self.settings
        return s.get("public_api_url") or f"http://{s['api_host']}:{s['api_port']}"

    @property
    def store(self) -> Store:
        if self._store is None:
            self.path.mkdir(parents=True, exist_ok=True)
            database = (self.settings.get("database") if self.exists() else None) or self.path / "coordinator.sqlite"
            self._store = Store(database)
        return self._store

    @property
    def signer(self) -> Signer:
        return Signer("coordinator", load_private_key(self.path / "coordinator.key"))

    @property
    def public_key(self) -> str:
        return public_key_text(load_private_key(self.path / "coordinator.key"))

    @property
    def nats_password(self) -> str:
        return (self.path / "nats.password").read_text(encoding="utf-8").strip()

    def tls_files(self) -> dict[str, Path] | None:
        tls = self.path / "tls"
        if (tls / "server.pem").exists() and (tls / "server.key").exists():
            files = {"cert": tls / "server.pem", "key": tls / "server.key"}
            if (tls / "ca.pem").exists():
                files["ca"] = tls / "ca.pem"
            return files
        return None

    # ------------------------------------------------------------------ NATS config

    @property
    def nats_conf_path(self) -> Path:
        return self.path / "nats.conf"

    def write_nats_conf(self) -> Path:
        s = self.settings
        sites = {site["name"]: site["nats_password_hash"] for site in self.store.sites() if site["state"] == "enrolled"}
        pw_hash_file = self.path / "nats.password.bcrypt"
        if not pw_hash_file.exists():
            _write_secret(pw_hash_file, natsconf.hash_password(self.nats_password))
        text = natsconf.render(s["nats_host"], int(s["nats_port"]), pw_hash_file.read_text().strip(), sites,
                               tls=self.tls_files(),
                               jetstream_dir=(self.path / "jetstream") if s.get("jetstream") else None)
        _write_secret(self.nats_conf_path, text)
        return self.nats_conf_path

    def reload_nats(self) -> bool:
        """Signal a running nats-server started by ``coordinator serve`` to re-read its config."""
        pid_file = self.path / "nats.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().strip()), 1)  # SIGHUP
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            return False

    # ------------------------------------------------------------------ enrollment

    def enroll_site(self, name: str, out_dir: str | Path) -> Bundle:
        if not valid_site_name(name):
            raise HomeError(f"site name {name!r}: use letters, digits, '-' or '_' (at most 64)")
        if name == natsconf.COORDINATOR_USER:
            raise HomeError(f"{name!r} is reserved")
        folder = Path(out_dir).expanduser().resolve() / name
        if folder.exists() and any(folder.iterdir()):
            raise HomeError(f"bundle folder {folder} already exists and is not empty")
        key = generate_key()
        password = secrets.token_urlsafe(24)
        try:
            self.store.add_site(name, public_key_text(key), natsconf.hash_password(password))
        except StoreError as exc:
            raise HomeError(str(exc)) from None
        folder.mkdir(parents=True, exist_ok=True)
        _write_secret(folder / "site.key", private_key_pem(key))
        (folder / "site.pub").write_text(public_key_text(key) + "\n", encoding="utf-8")
        _write_secret(folder / "bus.password", password + "\n")
        (folder / "coordinator.pub").write_text(self.public_key + "\n", encoding="utf-8")
        if self.tls_files() and self.tls_files().get("ca"):
            (folder / "ca.pem").write_bytes(self.tls_files()["ca"].read_bytes())
        toml = (
            f"# radfed node settings for site {name!r}, from the coordinator's enrollment bundle.\n"
            f"# Merge into node.toml (paths are relative to node.toml; keep site.key and bus.password private).\n"
            f"[site]\nname = \"{name}\"\n\n"
            f"[bus]\nurl = \"{self.public_nats_url}\"\nuser = \"{name}\"\npassword_file = \"bus.password\"\n"
            f"signing_key = \"site.key\"\ncoordinator_key = \"{self.public_key}\"\nheartbeat_seconds = 5\n"
            + ("durable = true\n" if self.settings.get("jetstream") else "")
            + ("tls_ca = \"ca.pem\"\n" if (folder / "ca.pem").exists() else "")
            + f"# coordinator API: {self.api_url}\n"
            f"# subjects: {request_subject(name)} (read), {heartbeat_subject(name)} (publish)\n"
        )
        (folder / "node.toml").write_text(toml, encoding="utf-8")
        (folder / "README.txt").write_text(
            f"Enrollment bundle for site {name}.\n"
            f"Site public key fingerprint: {key_fingerprint(public_key_text(key))}\n"
            f"Copy this folder to the node, merge node.toml into the node's node.toml, then run:\n"
            f"  radfed-node --config node.toml serve\n", encoding="utf-8")
        self.write_nats_conf()
        self.reload_nats()
        return Bundle(name, folder, folder / "node.toml")

    def revoke_site(self, name: str) -> None:
        self.store.revoke_site(name)  # an unknown site: store.NotFound (404, exit 2)
        self.write_nats_conf()
        self.reload_nats()
