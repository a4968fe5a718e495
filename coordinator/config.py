"""``coordinator.toml``: the coordinator operator's one configuration file.

The coordinator keeps its state in a home folder (:mod:`coordinator.home`: ``settings.json``, keys, job
store, generated ``nats.conf``).  A deployment describes the same settings declaratively in
``coordinator.toml``; :func:`apply` writes them into the home (creating it on first use), so
``radfed coordinator serve --config coordinator.toml`` under systemd or compose always runs on what the
file says.  Keys absent from the file take their defaults (see ``deploy/examples/coordinator.toml``)::

    [coordinator]
    home = "/var/lib/radfed/coordinator"   # relative paths are relative to this file

    [nats]
    host = "0.0.0.0"                       # nats-server listen address (nats.conf ``listen``)
    port = 4222
    public_url = "tls://bus.example.org:4222"   # what site bundles point at
    external_url = "tls://localhost:4222"  # connect here instead of starting nats-server as a child
    jetstream = true                       # durable queue for offline sites
    tls = true                             # make a private CA + server certificate if HOME/tls has none
    tls_hosts = ["bus.example.org", "localhost"]

    [api]
    host = "127.0.0.1"
    port = 8750
    public_url = "https://radfed.example.org"

    [database]
    url = "postgresql://radfed@db/radfed?passfile=/run/secrets/pgpass"   # job store; never a password literal

    [flower]
    host = "0.0.0.0"                       # Flower SuperLink (``serve --flower``), TLS from HOME/tls
    port = 9093

The TOML format is TOML v1.0.0 (read with :mod:`tomllib`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cdm.spec import Spec
from cdm.tomlkeys import read_toml, unknown_or_mistyped
from coordinator.home import DEFAULTS, CoordinatorHome, HomeError

_STR, _INT, _BOOL, _LIST = (str,), (int,), (bool,), (list,)

#: table -> key -> accepted TOML types.  Unknown tables or keys are errors, never silently ignored.
KNOWN_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "coordinator": {"home": _STR},
    "nats": {"host": _STR, "port": _INT, "public_url": _STR, "external_url": _STR, "jetstream": _BOOL,
             "tls": _BOOL, "tls_hosts": _LIST},
    "api": {"host": _STR, "port": _INT, "public_url": _STR},
    "database": {"url": _STR},
    "flower": {"host": _STR, "port": _INT},
}

#: (table, key) -> the settings.json entry it governs.
SETTINGS = {
    ("nats", "host"): "nats_host", ("nats", "port"): "nats_port", ("nats", "public_url"): "public_nats_url",
    ("nats", "jetstream"): "jetstream", ("api", "host"): "api_host", ("api", "port"): "api_port",
    ("api", "public_url"): "public_api_url", ("database", "url"): "database",
    ("flower", "host"): "flower_host", ("flower", "port"): "flower_port",   # coordinator/learn/superlink.py
}


class CoordinatorConfigError(HomeError):
    """coordinator.toml is missing, not TOML, or has unknown keys or wrong values."""


@dataclass
class CoordinatorConfig:
    path: Path
    raw: dict = field(default_factory=dict)

    def get(self, table: str, key: str, default=None):
        return self.raw.get(table, {}).get(key, default)

    @property
    def home_path(self) -> Path:
        return (self.path.parent / self.get("coordinator", "home", "radfed-coordinator")).resolve()

    @property
    def external_nats_url(self) -> str | None:
        return self.get("nats", "external_url")

    def settings(self) -> dict:
        """The settings.json values this file fixes: its own, else the defaults (``None``: not set,
        the reader's own default applies)."""
        fixed = {name: self.get(table, key, DEFAULTS.get(name)) for (table, key), name in SETTINGS.items()}
        # [code_systems] ALIAS = "uri": the network's names for local code systems, added to every spec
        fixed["code_systems"] = dict(self.raw["code_systems"]) if self.raw.get("code_systems") else None
        return fixed


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    path = Path(path)
    return CoordinatorConfig(path.resolve(), read_toml(path, "coordinator config", CoordinatorConfigError))


def validate(config: CoordinatorConfig) -> list[str]:
    """Problems: unknown tables/keys, wrong types, impossible values (ports, TLS host list)."""
    problems = unknown_or_mistyped({k: v for k, v in config.raw.items() if k != "code_systems"}, KNOWN_KEYS)
    if problems:
        return problems
    try:  # the same rules as a spec's own code_systems
        Spec.model_validate({"code_systems": config.raw.get("code_systems") or {}})
    except ValidationError as exc:
        problems += [f"[code_systems] {'.'.join(map(str, e['loc'][1:]))}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_url=False, include_input=False)]
    for table in ("nats", "api", "flower"):
        port = config.get(table, "port")
        if port is not None and not 0 < port < 65536:
            problems.append(f"[{table}] port: {port} is not a TCP port (1-65535)")
    hosts = config.get("nats", "tls_hosts")
    if hosts is not None and (not hosts or not all(isinstance(h, str) and h for h in hosts)):
        problems.append("[nats] tls_hosts: a non-empty list of host names or IP addresses")
    for table, key in (("nats", "public_url"), ("nats", "external_url")):
        url = config.get(table, key)
        if url is not None and not url.startswith(("nats://", "tls://")):
            problems.append(f"[{table}] {key}: {url!r} must start with nats:// or tls://")
    if config.get("nats", "tls") and config.get("nats", "public_url", "").startswith("nats://"):
        problems.append("[nats] public_url: tls = true, so sites must connect with tls://")
    return problems


def apply(config: CoordinatorConfig) -> tuple[CoordinatorHome, list[str]]:
    """Create or update the home from ``config``; returns the home and notes for the operator.

    Idempotent: settings.json is rewritten with exactly the file's values (defaults for absent keys),
    the TLS material is made once (``tls = true`` and no ``HOME/tls/server.pem`` yet), and nats.conf
    is regenerated.  Nothing is written when the file has a problem.
    """
    problems = validate(config)
    if problems:
        raise CoordinatorConfigError(f"{config.path}: " + "; ".join(problems))
    home = CoordinatorHome(config.home_path)
    wanted = config.settings()
    home.init(**wanted)
    current = home.settings
    if any(current.get(name) != value for name, value in wanted.items()):  # a key removed from the file
        updated = {**current, **wanted}
        for name in [n for n, v in wanted.items() if v is None and n not in DEFAULTS]:
            del updated[name]   # e.g. flower_port: absent means the reader's default, never null
        home.settings_path.write_text(json.dumps(updated, indent=2) + "\n", encoding="utf-8")
        home = CoordinatorHome(config.home_path)  # forget a job store opened on the old settings
    notes = []
    if config.get("nats", "tls", False) and home.tls_files() is None:
        from coordinator.tlsinit import make_tls

        make_tls(home.path / "tls", list(config.get("nats", "tls_hosts") or [wanted["nats_host"], "localhost"]))
        notes.append(f"made a private CA and server certificate in {home.path / 'tls'} (ca.pem goes into bundles)")
    elif not config.get("nats", "tls", False) and home.tls_files() is not None:
        notes.append(f"tls = false but {home.path / 'tls'} holds a server certificate: the bus still speaks TLS")
    if "flower" in config.raw:  # the SuperLink's state folder, for a SuperLink run as its own service
        (home.path / "flower").mkdir(exist_ok=True)
    home.write_nats_conf()
    return home, notes
