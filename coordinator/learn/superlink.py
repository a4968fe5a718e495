"""The coordinator's Flower SuperLink: command line, supervision, CLI connection, SuperNode registry.

``flower-superlink`` (Flower 1.42) serves the Fleet, Control and Runtime APIs over HTTP(S) on one
port.  radfed starts it with

* ``--database HOME/flower/superlink.db`` — runs, nodes and registrations survive a restart;
* TLS from ``HOME/tls`` (``radfed coordinator tls-init``: ``server.pem``/``server.key``/``ca.pem``),
  required: Flower allows SuperNode authentication only over TLS;
* ``--enable-supernode-auth`` — a SuperNode connects only with a key registered by the coordinator
  (``flwr supernode register KEY.pub``, :func:`register_supernode`);
* ``--disable-runtime-dependency-installation`` — no ``uv sync`` of whatever a FAB declares;
* ``FLWR_TELEMETRY_ENABLED=0`` in its environment (and in every ``flwr`` CLI call).

Two ways to run it: ``radfed coordinator serve --flower`` supervises it next to the API
(:class:`cdm.learn.process.Supervised` restarts it when it exits); ``radfed coordinator superlink``
*is* it (the process replaces itself with ``flower-superlink``, same command line and environment),
for a service manager that supervises (deploy/systemd/radfed-superlink.service, the compose
``superlink`` service).  ``flwr`` CLI calls use ``HOME/flower/home`` as ``FLWR_HOME`` with one
connection, ``radfed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from cdm.errors import RadfedError
from cdm.learn.process import Supervised, flower_env

DEFAULT_PORT = 9093
CONNECTION = "radfed"


class FlowerLink:
    """Where one coordinator's SuperLink keeps its state, and how to reach it."""

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 tls: dict[str, Path] | None = None):
        self.folder = Path(folder)
        self.host, self.port, self.tls = host, int(port), tls

    @classmethod
    def for_home(cls, home, port: int | None = None) -> "FlowerLink":
        settings = home.settings
        return cls(home.path / "flower", settings.get("flower_host", settings.get("api_host", "127.0.0.1")),
                   int(port or settings.get("flower_port", DEFAULT_PORT)), home.tls_files())

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def database(self) -> Path:
        return self.folder / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.folder / "home"

    def command(self) -> list[str]:
        cmd = [str(Path(sys.executable).parent / "flower-superlink"), "--host", self.host, "--port", str(self.port),
               "--database", str(self.database), "--enable-supernode-auth",
               "--disable-runtime-dependency-installation"]
        if not self.tls:  # Flower refuses --enable-supernode-auth without TLS (exit code 104), and so do we
            raise FlowerError("the Flower SuperLink needs TLS (SuperNode authentication requires it): "
                              "run `radfed coordinator tls-init` first")
        cmd += ["--ssl-certfile", str(self.tls["cert"]), "--ssl-keyfile", str(self.tls["key"])]
        if self.tls.get("ca"):
            cmd += ["--ssl-ca-certfile", str(self.tls["ca"])]
        return cmd

    def write_cli_config(self) -> Path:
        """``FLWR_HOME/config.toml`` naming this SuperLink as the ``radfed`` connection."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        if self.tls and self.tls.get("ca"):
            lines.append(f"root-certificates = {json.dumps(str(self.tls['ca']))}")
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def flwr(self, *args: str, timeout: float = 60) -> dict:
        """Run ``flwr ARGS --format json`` against this SuperLink; its JSON answer (raises on failure)."""
        self.write_cli_config()
        out = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"],
                             capture_output=True, text=True, timeout=timeout, env=flower_env(self.flwr_home))
        try:
            answer = json.loads(out.stdout[out.stdout.find("{"):]) if "{" in out.stdout else {}
        except json.JSONDecodeError:
            answer = {}
        if out.returncode != 0 or not answer.get("success", False):
            message = answer.get("error-message") or out.stderr.strip() or out.stdout.strip()
            raise FlowerError(f"flwr {args[0]} failed: {message[-1500:]}")
        return answer


class FlowerError(RadfedError, RuntimeError):
    """A Flower CLI call or process that failed; the message carries Flower's own reason."""


def register_supernode(link: FlowerLink, public_key: str | Path, name: str) -> dict:
    """Admit a SuperNode by its public key (OpenSSH ECDSA, from ``radfed-node flower-key``)."""
    return link.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name)


def start_superlink(link: FlowerLink, log=print) -> Supervised:
    link.folder.mkdir(parents=True, exist_ok=True)
    link.write_cli_config()
    return Supervised("flower-superlink", link.command(), link.folder / "superlink.out", flower_env(link.flwr_home),
                      log).start()


def start_for_home(home, log=print, port: int | None = None) -> Supervised:
    """``radfed coordinator serve --flower``: the home's SuperLink, supervised."""
    from coordinator.home import HomeError

    link = FlowerLink.for_home(home, port)
    if not link.tls:
        raise HomeError(f"no TLS certificate in {home.path / 'tls'}: the Flower SuperLink needs TLS "
                        f"(SuperNode authentication requires it); run `radfed coordinator tls-init --home {home.path}`")
    process = start_superlink(link, log)
    log(f"Flower SuperLink on {link.address} (TLS; state in {link.database}; "
        f"register SuperNodes with `radfed flower-register`)")
    return process


@click.command("superlink")
@click.option("--home", default="radfed-coordinator", show_default=True, envvar="RADFED_COORDINATOR_HOME",
              help="Coordinator folder (the SuperLink's state is HOME/flower, its TLS HOME/tls).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="coordinator.toml: its [coordinator] home and [flower] host/port (replaces --home).")
def superlink_command(home: str, config_path: str | None) -> None:
    """Run the Flower SuperLink in the foreground (for systemd / compose, which restart it).

    The same command line and environment as `serve --flower` supervises (TLS, SuperNode
    authentication, --database, no runtime dependency installation, telemetry off); the process
    becomes `flower-superlink` (same PID).  The home must exist with its TLS material
    (`radfed coordinator config apply`, which radfed-nats.service / the compose `setup` run first).
    """
    from coordinator.home import CoordinatorHome, HomeError

    if config_path:
        from coordinator.config import load_coordinator_config, validate

        config = load_coordinator_config(config_path)
        problems = validate(config)
        if problems:
            raise HomeError(f"{config.path}: " + "; ".join(problems))
        home_path = config.home_path
    else:
        home_path = Path(home)
    h = CoordinatorHome(home_path)
    if not h.exists():
        raise HomeError(f"no coordinator at {h.path}: run `radfed coordinator config apply` (or init) first")
    link = FlowerLink.for_home(h)
    if not link.tls:
        raise HomeError(f"no TLS certificate in {h.path / 'tls'}: the Flower SuperLink needs TLS "
                        "(SuperNode authentication requires it); set [nats] tls = true and apply, or run tls-init")
    link.folder.mkdir(parents=True, exist_ok=True)
    link.write_cli_config()
    command = link.command()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, flower_env(link.flwr_home))
