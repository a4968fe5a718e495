"""Waiting for a server process we started (NATS, the coordinator's API, a Flower SuperLink, a
DICOM listener) until it accepts TCP connections."""

from __future__ import annotations

import socket
import subprocess
import time


def wait_listening(host: str, port: int, timeout: float = 30, process: subprocess.Popen | None = None,
                   error: type[Exception] = TimeoutError) -> None:
    """Return once ``host:port`` accepts a connection; ``error`` after ``timeout`` seconds, or as soon
    as ``process`` (the server, when we started it) has exited: it never will."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise error(f"process exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise error(f"nothing listening on {host}:{port} after {timeout:.0f} s")
