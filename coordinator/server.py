"""``radfed coordinator serve``: the coordinator's nats-server (optional) and HTTP API in one process."""

from __future__ import annotations

import signal
import time

import click

from coordinator.home import CoordinatorHome
from coordinator.natsproc import NatsServer


def log(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] radfed coordinator: {message}", err=True)


def serve(home: CoordinatorHome, api_host: str | None = None, api_port: int | None = None,
          external_nats: str | None = None, flower: bool = False) -> None:
    import uvicorn

    from coordinator.api import create_app
    from coordinator.service import Coordinator

    settings = home.settings
    api_host = api_host or settings["api_host"]
    api_port = int(api_port or settings["api_port"])
    nats = superlink = None
    pid_file = home.path / "nats.pid"
    try:
        if external_nats is None:
            conf = home.write_nats_conf()
            nats = NatsServer(conf, settings["nats_host"], int(settings["nats_port"]), home.path / "nats.log").start()
            pid_file.write_text(str(nats.process.pid))
            log(f"nats-server listening on {home.nats_url} ({len(home.store.public_keys())} site(s) enrolled)")
        if flower:  # issue 9: the Flower SuperLink for federated training (coordinator/learn/superlink.py)
            from coordinator.learn.superlink import start_for_home

            superlink = start_for_home(home, log)
        coordinator = Coordinator(home, external_nats or home.nats_url, log=log)
        app = create_app(coordinator)
        log(f"API on http://{api_host}:{api_port}")
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with a Python handler installed
        # that re-raise is harmless and the nats-server below is stopped too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        uvicorn.Server(uvicorn.Config(app, host=api_host, port=api_port, log_level="warning",
                                      access_log=False)).run()
    finally:
        if superlink is not None:
            superlink.stop()
        if nats is not None:
            nats.stop()
            pid_file.unlink(missing_ok=True)
        log("stopped")
