"""Starting Flower processes: their environment and a supervisor that restarts them.

Shared by the coordinator (SuperLink) and the site (SuperNode).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path



def flower_env(flwr_home: Path | None = None) -> dict:
    """Environment for Flower processes: telemetry off, this venv's tools first on PATH."""
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.2"  # default 1 s per task pickup
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


class Supervised:
    """Run a command; restart it when it exits (backoff 1 s -> 30 s) until :meth:`stop`.

    Each start gets its own process group, so stopping also ends the helpers Flower spawns
    (SuperExec, ServerApp/ClientApp subprocesses).
    """

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict, log=print):
        self.name, self.command, self.log_path, self.env, self.log = name, command, log_path, env, log
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def start(self) -> "Supervised":
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self.log(f"{self.name} exited with code {code}; restarting in {delay:.0f} s (see {self.log_path})")
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self._spawn()
            self.restarts += 1

    def stop(self, timeout: float = 5) -> None:
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        except ProcessLookupError:
            pass
