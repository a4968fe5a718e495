"""The node's ``[bus]`` settings and its outbound NATS connection.

A site never listens on the network for queries: the agent connects *out* to the coordinator's NATS
server with the site's own credentials (from the enrollment bundle), which only let it read its own
request subject, publish its own heartbeats and answer the requests it received.

``node.toml``::

    [bus]
    url = "nats://coordinator.example.org:4222"
    user = "site-a"
    password_file = "bus.password"        # or password = "..."
    signing_key = "site.key"              # the site's Ed25519 private key (PEM)
    coordinator_key = "base64..."         # requests not signed by the coordinator are refused
    heartbeat_seconds = 5
    tls_ca = "ca.pem"                     # optional; TLS when the URL is tls://
    durable = true                        # when the coordinator queues requests in JetStream
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cdm.wire import WireError, load_private_key, load_public_key, valid_site_name
from node.config import ConfigError, NodeConfig


@dataclass
class BusSettings:
    site: str
    url: str
    user: str | None
    password: str | None
    signing_key: Path
    coordinator_key: str | None
    heartbeat_seconds: float = 5.0
    tls_ca: Path | None = None
    max_concurrent: int = 4
    durable: bool = False   # also pull requests queued (JetStream) while this site was offline

    def signer_key(self):
        try:
            return load_private_key(self.signing_key)
        except WireError as exc:
            raise ConfigError(f"[bus] signing_key: {exc}") from None

    def coordinator_public_key(self):
        if not self.coordinator_key:
            return None
        try:
            return load_public_key(self.coordinator_key)
        except WireError as exc:
            raise ConfigError(f"[bus] coordinator_key: {exc}") from None


def bus_settings(config: NodeConfig) -> BusSettings:
    """Read and check ``[bus]``; every problem is a :class:`ConfigError` naming the key."""
    section = config.section("bus")
    base = config.path.parent if config.path else Path.cwd()
    site = config.site_name
    if not valid_site_name(site):
        raise ConfigError(f"[site] name {site!r} must be letters, digits, '-' or '_'")
    if "url" not in section:
        raise ConfigError("[bus] url is missing: add the coordinator's NATS URL (from the enrollment bundle)")
    password = section.get("password")
    if password is None and section.get("password_file"):
        path = base / section["password_file"]
        try:
            password = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[bus] password_file {str(path)!r}: {exc.strerror}") from None
    if "signing_key" not in section:
        raise ConfigError("[bus] signing_key is missing: the site's Ed25519 key from the enrollment bundle")
    try:
        heartbeat = float(section.get("heartbeat_seconds", 5))
        concurrent = int(section.get("max_concurrent", 4))
    except (TypeError, ValueError):
        raise ConfigError("[bus] heartbeat_seconds and max_concurrent must be numbers") from None
    return BusSettings(
        site=site,
        url=str(section["url"]),
        user=section.get("user", site),
        password=password,
        signing_key=base / section["signing_key"],
        coordinator_key=section.get("coordinator_key"),
        heartbeat_seconds=max(heartbeat, 0.2),
        tls_ca=(base / section["tls_ca"]) if section.get("tls_ca") else None,
        max_concurrent=max(concurrent, 1),
        durable=bool(section.get("durable", False)),
    )


def tls_context(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        return None
    context = ssl.create_default_context(cafile=str(ca))
    return context


async def connect(url: str, user: str | None, password: str | None, name: str, tls_ca: Path | None = None,
                  error_cb=None, reconnect: bool = True, inbox_prefix: str | None = None):
    """An outbound NATS connection; authentication failures raise instead of retrying forever."""

    async def _errors(exc):  # nats-py reports asynchronous server errors here
        if error_cb is not None:
            await error_cb(exc)

    import nats  # here, not at the top: only `serve` pays for the NATS client (issue 15.7)

    # A few attempts at first (a wrong password or an unreachable server is an error to report now),
    # then reconnect forever once the site is known to be accepted.
    nc = await nats.connect(
        servers=[url],
        user=user,
        password=password,
        name=name,
        tls=tls_context(tls_ca),
        error_cb=_errors,
        allow_reconnect=reconnect,
        max_reconnect_attempts=2,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        **({"inbox_prefix": inbox_prefix} if inbox_prefix else {}),
    )
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    return nc
