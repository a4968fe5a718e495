"""The node's configuration, ``node.toml``.

One file a site administrator owns.  Each concern reads its own table from it (``[site]``,
``[database]``, ``[policy]``, ``[bus]``, ``[dicom]``...); this module only finds and parses the file
and answers the two things every command needs: which site this is and where its CDM lives.

Lookup order for the database: ``--db`` on the command line, ``RADFED_NODE_DB``, ``[database] url``
in node.toml, then ``radfed-node.sqlite`` in the current folder (the embedded default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cdm.errors import EXIT_USAGE, RadfedError
from cdm.tomlkeys import read_toml, unknown_or_mistyped

DEFAULT_DB = "radfed-node.sqlite"


class ConfigError(RadfedError, ValueError):
    """node.toml is missing, unreadable or has a wrong value."""

    exit_code = EXIT_USAGE

    def reply_message(self) -> str:  # the site's node.toml, not the request, is wrong: say so
        return f"this node's configuration is invalid: {self}"


@dataclass
class NodeConfig:
    path: Path | None
    raw: dict = field(default_factory=dict)
    db_override: str | None = None

    @property
    def site_name(self) -> str:
        return str(self.raw.get("site", {}).get("name", "local"))

    @property
    def database_url(self) -> str:
        return (
            self.db_override
            or os.environ.get("RADFED_NODE_DB")
            or self.raw.get("database", {}).get("url")
            or DEFAULT_DB
        )

    def writable_cdm(self, command: str):
        """An engine on this node's CDM for ``command``, which writes OMOP tables: refused up front
        (exit 2) when the CDM is missing or is a site's own OMOP database, attached read-only."""
        from cdm.db import open_engine, require_writable_cdm

        engine = open_engine(self.database_url)
        require_writable_cdm(engine, command)
        return engine

    @property
    def data_dir(self) -> Path:
        """Where the node keeps files it owns (received DICOM, quarantine copies, keys)."""
        configured = self.raw.get("site", {}).get("data_dir")
        base = self.path.parent if self.path else Path.cwd()
        return (base / configured) if configured else base / "radfed-data"

    def section(self, name: str) -> dict:
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        return value


def load_config(path: str | Path | None = None, db: str | None = None) -> NodeConfig:
    """Read ``path`` (or ``./node.toml`` when it exists); a missing explicit path is an error."""
    if path is None:
        candidate = Path("node.toml")
        if not candidate.exists():
            return NodeConfig(None, {}, db)
        path = candidate
    path = Path(path)
    return NodeConfig(path.resolve(), read_toml(path, "node config", ConfigError), db)


# -- validation (``radfed-node config check``) ------------------------------------------------------
# Every key some part of the node reads, with the TOML types it accepts.  The loaders themselves
# ignore keys they do not know, so a misspelt key (``min_cel_count``) would silently fall back to a
# default; ``validate`` is what catches it.  A concern that reads a new key adds it here.
_STR, _INT, _NUM, _BOOL, _LIST = (str,), (int,), (int, float), (bool,), (list,)
KNOWN_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "site": {"name": _STR, "data_dir": _STR},
    "database": {"url": _STR},
    "state": {"url": _STR},
    "bus": {"url": _STR, "user": _STR, "password": _STR, "password_file": _STR, "signing_key": _STR,
            "coordinator_key": _STR, "heartbeat_seconds": _NUM, "tls_ca": _STR, "max_concurrent": _INT,
            "durable": _BOOL},
    "policy": {"min_cell_count": _INT, "min_rows_model": _INT, "rows_per_parameter": _INT, "differencing_k": _INT,
               "max_requests_per_hour": _INT, "allowed_analyses": _LIST,
               "approval": (str, list), "noise": (dict,), "audit_linked_releases": _BOOL},  # issue 6 (H7)
    "dicom": {"ae_title": _STR, "host": _STR, "port": _INT, "move_port": _INT, "patient_id_issuer": _STR,
              "private_sop_classes": _LIST},  # node/dicom/ (issue 18)
    "fhir": {"mrn_system": _STR},
    "query": {"frame_cache": _BOOL},  # node/execute.py FrameCache
    "secure": {"required": _BOOL, "lock_rounds": _BOOL, "trust": _STR, "peers": (dict,)},  # node/secure.py (issue 17)
    "learning": {"superlink": _STR, "root_certificates": _STR, "allowed_features": _LIST,  # node/learn/ (issue 9)
                 "rows_per_parameter": _INT, "allowed_fab_hashes": _LIST, "runtime_port": _INT},
}


def validate(config: NodeConfig) -> list[str]:
    """Problems with ``config``'s keys: unknown tables or keys, and values of the wrong TOML type."""
    return unknown_or_mistyped(config.raw, KNOWN_KEYS)
