"""``radfed demo``: a whole federation on one machine, from synthetic hospital exports to pooled results.

1. ``radfed-node synth``: three synthetic sites (FHIR bulk NDJSON + DICOM, planted signals).
2. ``radfed-node init`` / ``vocab load-map`` / ``ingest fhir`` / ``ingest dicom``: one SQLite CDM per site,
   through the same ingest paths a hospital uses.
3. A coordinator home: enroll the three sites (credential bundles), add a researcher.
4. ``radfed coordinator serve`` (nats-server + API) and three ``radfed-node serve`` agents, all real
   processes on free loopback ports.
5. Representative federated specs through the HTTP API; results printed pooled + per site, plots
   written as PNG; the web console's address and a token to sign in with.
6. With ``--serve``, the network and the console stay up until Ctrl-C; then (or at once without it)
   everything is stopped, whatever happened.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from cdm.errors import EXIT_PARTIAL, RadfedError
from coordinator.client import Client, ClientError
from coordinator.home import CoordinatorHome
from coordinator.natsproc import free_coordinator_ports, wait_for_port
from coordinator.report import render_job

BIN = Path(sys.executable).parent


class DemoError(RadfedError, RuntimeError):
    pass


def say(message: str) -> None:
    click.echo(click.style("==> ", fg="cyan", bold=True) + message)


def _run(args: list[str], what: str, log: Path, allow_fail: bool = False, line: int = 0,
         partial_ok: bool = False) -> subprocess.CompletedProcess:
    """Run one CLI step, log all it printed, echo its ``line``-th line (the commands' headline is first).
    ``partial_ok``: exit 3 (finished, something quarantined: the synthetic data plants bad input) is fine."""
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode not in ((0, EXIT_PARTIAL) if partial_ok else (0,)) and not allow_fail:
        raise DemoError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    headline = (proc.stdout.strip().splitlines() or [""])[line]
    click.echo(f"    {what}: {headline[:150]} ({time.perf_counter() - started:.1f} s)")
    return proc


class Demo:
    def __init__(self, out: Path, patients: int, seed: int):
        self.out = out
        self.patients = patients
        self.seed = seed
        self.log = out / "demo.log"
        self.procs: list[subprocess.Popen] = []
        self.sites: list[str] = []
        self.truth: dict = {}
        self.home: CoordinatorHome | None = None
        self.token: str | None = None

    # ------------------------------------------------------------------ data

    def build_data(self) -> None:
        data = self.out / "synthetic"
        say(f"generating a synthetic 3-site network ({self.patients} patients, seed {self.seed})")
        _run([str(BIN / "radfed-node"), "synth", "--sites", "3", "--patients", str(self.patients),
              "--seed", str(self.seed), str(data)], "synth", self.log, line=-1)
        self.truth = json.loads((data / "ground_truth.json").read_text())
        self.sites = [s["name"] for s in self.truth["sites"]]
        say("ingesting each site into its own SQLite CDM through the FHIR and DICOM ingest paths")
        for site in self.truth["sites"]:
            name = site["name"]
            db = str(self.out / "sites" / f"{name}.sqlite")
            (self.out / "sites").mkdir(exist_ok=True)
            node = [str(BIN / "radfed-node"), "--db", db]
            _run(node + ["init"], f"{name} init", self.log)
            if site.get("vocabulary_map") and (data / site["vocabulary_map"]).exists():
                _run(node + ["vocab", "load-map", str(data / site["vocabulary_map"])], f"{name} vocabulary map", self.log)
            _run(node + ["ingest", "fhir", str(data / site["fhir_dir"])], f"{name} FHIR", self.log,
                 partial_ok=True)
            if site.get("dicom_dir"):
                _run(node + ["ingest", "dicom", str(data / site["dicom_dir"])], f"{name} DICOM", self.log,
                     partial_ok=True)
                _run(node + ["features", "--all"], f"{name} radiomic features", self.log, allow_fail=True)

    # ------------------------------------------------------------------ network

    def start_network(self) -> Client:
        say("setting up the coordinator: enrolling 3 sites, adding a researcher")
        home = CoordinatorHome(self.out / "coordinator").init(**free_coordinator_ports())
        for site in self.sites:
            if home.store.site(site) is None:
                bundle = home.enroll_site(site, self.out / "bundles")
                toml = bundle.node_toml.read_text().replace("heartbeat_seconds = 5", "heartbeat_seconds = 2")
                db = (self.out / "sites" / f"{site}.sqlite").resolve()
                bundle.node_toml.write_text(toml + f"\n[database]\nurl = \"{db}\"\n")
        token = self.token = home.store.add_researcher(f"demo-{int(time.time())}", "researcher")
        self.home = home
        say(f"starting NATS + coordinator API ({home.nats_url}, {home.api_url})")
        self._spawn([str(BIN / "radfed"), "coordinator", "serve", "--home", str(home.path)], "coordinator")
        wait_for_port("127.0.0.1", home.settings["api_port"], timeout=60, process=self.procs[-1])
        client = Client(home.api_url, token)
        self._wait(lambda: client.health().get("bus"), "the coordinator to reach its bus")
        say("starting three node agents (each connects out with its own credentials)")
        for site in self.sites:
            self._spawn([str(BIN / "radfed-node"), "--config", str(self.out / "bundles" / site / "node.toml"),
                         "serve", "--quiet"], site)
        self._wait(lambda: all(s["online"] for s in client.sites()), "all sites to come online")
        for s in client.sites():
            click.echo(f"    {s['site']}: online, version {s['version']}")
        return client

    def _spawn(self, args: list[str], name: str) -> None:
        log = open(self.out / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()

    def _wait(self, ready, what: str, timeout: float = 60.0) -> None:
        import httpx  # the demo only: `radfed --help` does not pay for the HTTP client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (ClientError, httpx.HTTPError):
                pass
            for proc in self.procs:
                if proc.poll() is not None:
                    raise DemoError(f"a process exited while waiting for {what}: {' '.join(proc.args[:4])}")
            time.sleep(0.2)
        raise DemoError(f"timed out waiting for {what}")

    def serve(self) -> None:
        """Keep the network up until Ctrl-C (SIGINT) or SIGTERM; a process that dies ends it too."""
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(True))
        operator = self.home.store.add_researcher(f"demo-operator-{int(time.time())}", "admin")
        click.echo(f"    operator token (enrol sites, add researchers, the audit): {operator}")
        say("serving the network and the web console until Ctrl-C")
        while not stop:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise DemoError(f"a process exited: {' '.join(dead[0].args[:4])}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []

    # ------------------------------------------------------------------ analyses

    def run_analyses(self, client: Client) -> list[dict]:
        from coordinator import demo_specs

        jobs = []
        for title, spec in demo_specs.specs(self.truth):
            say(f"federated {title}")
            started = time.perf_counter()
            job = client.run(spec, timeout=60)
            click.echo(render_job(job))
            click.echo(f"    ({1000 * (time.perf_counter() - started):.0f} ms end to end)\n")
            jobs.append({"title": title, "job": job})
        return jobs

    def plots(self, jobs: list[dict]) -> list[Path]:
        from coordinator import plots

        folder = self.out / "plots"
        folder.mkdir(exist_ok=True)
        written = []
        for i, item in enumerate(jobs, 1):
            path = plots.plot_job(item["job"], item["title"], folder / f"{i:02d}-{plots.slug(item['title'])}.png")
            if path is not None:
                written.append(path)
        return written


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="radfed-demo", show_default=True,
              help="Folder for the data, CDMs, logs and plots (emptied first).")
@click.option("--patients", default=600, show_default=True,
              help="Synthetic patients over the three sites (600: the concordance cells clear the sites' minimum count).")
@click.option("--seed", default=7, show_default=True)
@click.option("--serve", is_flag=True, help="Keep the network and the web console running until Ctrl-C.")
def demo_command(out: str, patients: int, seed: int, serve: bool) -> None:
    """Run a whole federation locally: synthetic sites, ingest, NATS, coordinator, 3 nodes, analyses, plots,
    and the web console (kept open with --serve)."""
    started = time.perf_counter()
    folder = Path(out).resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    demo = Demo(folder, patients, seed)
    try:
        demo.build_data()
        client = demo.start_network()
        jobs = demo.run_analyses(client)
        written = demo.plots(jobs)
        say(f"plots: {', '.join(str(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p) for p in written) or 'none'}")
        say(f"web console: {demo.home.api_url}/console/ (sign in with the researcher token {demo.token})")
        if serve:
            demo.serve()
        else:
            click.echo("    (it stops with the network now: `radfed demo --serve` keeps both running until Ctrl-C)")
    except (DemoError, ClientError) as exc:
        click.echo(f"error: {exc} (logs in {folder})", err=True)
        sys.exit(2)
    finally:
        say("stopping the node agents, the coordinator and NATS")
        demo.stop()
    say(f"done in {time.perf_counter() - started:.0f} s; everything is in {folder}")
