"""The node's configuration, ``node.toml``.

One file a site administrator owns.  Each concern reads its own table from it (``[site]``,
``[database]``, ``[policy]``, ``[bus]``, ``[dicom]``...); this module only finds and parses the file
and answers the two things every command needs: which site this is and where its CDM lives.

Lookup order for the database: ``--db`` on the command line, ``RADFED_NODE_DB``, ``[database] url``
in node.toml, then ``radfed-node.sqlite`` in the current folder (the embedded default).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB = "radfed-node.sqlite"


class ConfigError(ValueError):
    """node.toml is missing, unreadable or has a wrong value."""


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
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"node config {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"node config {str(path)!r} is not valid TOML: {exc}") from None
    return NodeConfig(path.resolve(), raw, db)
