"""The web console in a real headless Chromium, the notebook API and the text results, on one real
network: nats-server, `radfed coordinator serve` and three `radfed-node serve` processes.

site-c's policy does not allow Cox rounds, so every Cox job is partial and site-c's refusal (with its
reason) must show in the browser, the CLI's text, JSON and CSV, and the notebook API.  The pooled
numbers are checked against lifelines on the same persons (1e-6), and the console's CSV download
against the CLI's, byte for byte.  Screenshots of each page go to ``RADFED_SCREENSHOTS`` or
``test-artifacts/console/`` (gitignored).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter

from coordinator.store import utcnow
from federation import Network
from survival_sites import COX_SPEC, CROSSTAB_SPEC, KM_SPEC, SITES, all_persons, fill

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("RADFED_SCREENSHOTS") or REPO / "test-artifacts" / "console")
NO_COX = 'allowed_analyses = ["count", "crosstab", "summary", "histogram", "quantile_round", "crossprod", "km_round"]'


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("console"), list(SITES))
    toml = net.bundles["site-c"].node_toml
    toml.write_text(toml.read_text() + f"\n[policy]\n{NO_COX}\n")
    for site in SITES:
        net.make_cdm(site, fill)
    net.start_coordinator()
    for site in SITES:
        net.start_node(site, wait=False)
    net.wait_online(list(SITES))
    net.expired_token = net.home.store.add_researcher("old-hand", "researcher", utcnow() - dt.timedelta(days=1))
    yield net
    net.close()


@pytest.fixture(scope="module", autouse=True)
def fresh_screenshots():
    for old in SHOTS.glob("*.png") if SHOTS.is_dir() else []:
        old.unlink()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='radfed-chromium-')}", "--window-size=1366,900"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException

    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, f"timed out waiting for {what}")


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


UNLABELLED = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
  .filter(e => !e.closest('#figure'))  /* Plotly's own toolbar */
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !(e.textContent || '').trim()
               && !(e.tagName === 'INPUT' && e.value && e.readOnly))
  .map(e => e.outerHTML.slice(0, 120));
"""


def shot(driver, name: str) -> Path:
    """A full-page screenshot of the current page, which must have no form control, button or link
    without a label or text (what a screen reader would announce)."""
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete"
         and d.find_elements("css selector", "main h1"), what=f"page {name} to load")
    assert driver.execute_script(UNLABELLED) == [], name
    assert driver.find_elements("css selector", "a.skip")
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1366, min(max(height, 900), 5000))
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1366, 900)
    assert path.stat().st_size > 5_000
    return path


def sign_in(driver, network, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{network.api}/console/sign-in")
    by_id(driver, "token").send_keys(token)
    by_id(driver, "token").submit()


def run_cli(network, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "radfed"), *args], capture_output=True, text=True, env=network.env(), timeout=180)


def yaml_text(spec: dict) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False)


# ---------------------------------------------------------------------------- refusals in the browser


def test_bad_and_expired_tokens_are_refused_in_the_browser(network, browser):
    browser.get(f"{network.api}/console/jobs")
    wait(browser, lambda d: "/console/sign-in" in d.current_url, what="the sign-in redirect")
    shot(browser, "01-sign-in")
    sign_in(browser, network, "rf_" + "x" * 43)
    error = wait(browser, lambda d: d.find_elements("id", "sign-in-error"), what="the refusal")[0]
    assert "unknown or revoked token" in error.text
    assert not browser.get_cookie("radfed_session")
    shot(browser, "02-sign-in-bad-token")

    sign_in(browser, network, network.expired_token)
    error = wait(browser, lambda d: d.find_elements("id", "sign-in-error"), what="the refusal")[0]
    assert "token expired" in error.text and not browser.get_cookie("radfed_session")
    shot(browser, "03-sign-in-expired-token")
    # and the API says the same to the expired token
    response = network.call("GET", "/v1/whoami", token=network.expired_token)
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_a_researcher_is_refused_on_operator_pages(network, browser):
    sign_in(browser, network, network.token)
    wait(browser, lambda d: d.find_elements("id", "who-name"), what="sign-in")
    assert "Researchers" not in by_id(browser, "main").text  # no operator links for a researcher
    for page in ("researchers", "sites", "audit"):
        browser.get(f"{network.api}/console/operator/{page}")
        refusal = wait(browser, lambda d: d.find_elements("id", "forbidden"), what="the 403 page")[0]
        assert "role admin" in refusal.text.replace("`", "") and "alice" in refusal.text
    shot(browser, "04-operator-page-refused")
    for method, path in (("POST", "/v1/researchers"), ("GET", "/v1/audit"), ("DELETE", "/v1/sites/site-a")):
        response = network.call(method, path, json={"name": "mallory"} if method == "POST" else None)
        assert response.status_code == 403, (path, response.text)
    entries = network.call("GET", "/v1/audit", token=network.admin_token, params={"action": "operator.refused"}).json()
    assert {e["target"] for e in entries["entries"] if e["actor"] == "alice"} >= {"/console/operator/audit"}
    assert entries["intact"]


# ---------------------------------------------------------------------------- the researcher's path


def test_write_validate_dry_run_submit_watch_plot_download(network, browser, downloads):
    from selenium.webdriver.common.keys import Keys

    sign_in(browser, network, network.token)
    wait(browser, lambda d: d.find_elements("id", "who-name"), what="sign-in")
    browser.get(f"{network.api}/console/sites")
    rows = browser.find_elements("css selector", "#sites-table tbody tr")
    assert len(rows) == 3 and all("online" in r.text for r in rows)
    assert "km_round" in rows[2].text and "cox_round" not in rows[2].text  # site-c's policy, from its heartbeat
    assert "cox_round" in rows[0].text
    shot(browser, "05-sites")

    browser.get(f"{network.api}/console/new")
    editor = by_id(browser, "spec")
    editor.send_keys(yaml_text(KM_SPEC).replace("group: sex", "group: sexx"))
    message = wait(browser, lambda d: d.find_elements("id", "problems"), what="the validation message")[0]
    assert "unknown variable 'sexx'" in message.text and "line " in message.text and "analysis.group" in message.text
    assert editor.get_attribute("aria-invalid") == "true"
    shot(browser, "06-editor-mistake")
    # the editor is usable from the keyboard: Tab indents, Esc then Tab moves on to the next control
    editor.send_keys(Keys.CONTROL, Keys.END)
    editor.send_keys(Keys.TAB)
    assert editor.get_attribute("value").endswith("  ")
    editor.send_keys(Keys.ESCAPE, Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") != "spec"
    # fix it with the keyboard: select all, type the right spec
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(Keys.DELETE)
    editor.send_keys(yaml_text(KM_SPEC))
    valid = wait(browser, lambda d: d.find_elements("id", "valid-message"), what="the spec to validate")[0]
    assert "Valid km spec" in valid.text
    browser.find_element("css selector", "#reference summary").click()  # the km fields, from the JSON Schema
    fields = wait(browser, lambda d: "bin_days" in d.find_element("id", "reference-body").text and
                  d.find_element("id", "reference-body").text, what="the field reference")
    assert "time" in fields and "required" in fields and "≤ 3660" in fields and "Kaplan-Meier" in fields

    by_id(browser, "dry-run").click()
    wait(browser, lambda d: len(d.find_elements("css selector", "#plan-body article")) == 3, what="the dry run")
    cards = {c.get_attribute("data-site"): c.text for c in browser.find_elements("css selector", "#plan-body article")}
    assert all("allowed" in text for text in cards.values())
    assert "first round asks the sites for km_round" in by_id(browser, "plan-body").text
    shot(browser, "07-editor-dry-run")
    jobs_before = network.call("GET", "/v1/jobs").json()["jobs"]

    by_id(browser, "submit").click()
    wait(browser, lambda d: "/console/jobs/" in d.current_url, what="the job page")
    job_id = browser.current_url.rstrip("/").split("/")[-1]
    assert job_id not in {j["job_id"] for j in jobs_before}
    shot(browser, "08-job-submitted")
    status = wait(browser, lambda d: d.find_elements("id", "job-status") and
                  d.find_element("id", "job-status").text in ("done", "partial", "failed") and
                  d.find_elements("css selector", "#figure[data-drawn=true]"), timeout=90, what="the job to finish")
    assert status and by_id(browser, "job-status").text == "done"
    sites = {r.get_attribute("data-site"): r.text for r in browser.find_elements("css selector", "#job-sites tbody tr")}
    assert set(sites) == set(SITES) and all(" ok" in f" {t}" for t in sites.values())
    # the KM plot with its risk table: curves per group and the "at risk" rows under them
    svg_text = browser.execute_script("return document.getElementById('figure').innerText || "
                                      "[...document.querySelectorAll('#figure text')].map(t => t.textContent).join(' ')")
    assert "at risk" in svg_text and "survival probability" in svg_text
    traces = browser.execute_script("return document.getElementById('figure').data.map(t => t.name || '')")
    assert any(name.startswith("F (n=") for name in traces) and any(name.startswith("M (n=") for name in traces)
    assert by_id(browser, "spec-hash").text == network.call("GET", f"/v1/jobs/{job_id}").json()["spec_hash"]
    shot(browser, "09-job-km-plot")

    by_id(browser, "download-csv").click()
    csv_path = downloads / f"radfed-{job_id[:8]}.csv"
    deadline = time.monotonic() + 30
    while not csv_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    browser_csv = csv_path.read_text(encoding="utf-8")

    cli_csv = Path(tempfile.mkdtemp()) / "km.csv"
    text = run_cli(network, "result", job_id, "--csv", str(cli_csv))
    assert text.returncode == 0, text.stderr
    assert browser_csv == cli_csv.read_text(encoding="utf-8")
    # ... and equal to what the CLI prints and to lifelines on the pooled persons
    rows = [r for r in csv.DictReader(io.StringIO(browser_csv)) if r["source"] == "pooled"]
    assert "Kaplan-Meier survival table" in text.stdout
    for r in rows:
        printed = f"pooled  {r['group']}      {float(r['time']):,.0f}"
        assert any(line.startswith("pooled") and line.split()[1:4] == [r["group"], f"{float(r['time']):,.0f}", r["at_risk"]]
                   for line in text.stdout.splitlines()), printed
    people = all_persons()
    for group, part in people.groupby("sex"):
        fitted = KaplanMeierFitter().fit(part["time"], part["event"])
        mine = {float(r["time"]): float(r["survival"]) for r in rows if r["group"] == group}
        for t, s in mine.items():
            assert s == pytest.approx(float(fitted.survival_function_at_times(t).iloc[0]), rel=1e-6)
    png = network.call("GET", f"/v1/jobs/{job_id}/plot.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    browser.get(f"{network.api}/console/jobs")
    assert job_id[:8] in by_id(browser, "jobs-table").text
    shot(browser, "10-jobs")


def test_a_refusal_shows_with_its_reason_everywhere(network, browser):
    sign_in(browser, network, network.token)
    wait(browser, lambda d: d.find_elements("id", "who-name"), what="sign-in")
    plan = network.call("POST", "/v1/specs/plan", json={"spec": COX_SPEC}).json()
    verdict = {s["site"]: s["plan"] for s in plan["sites"]}
    assert verdict["site-a"]["allowed"] and not verdict["site-c"]["allowed"]
    assert verdict["site-c"]["refusal"]["code"] == "NOT_ALLOWED" and "cox_round" in verdict["site-c"]["refusal"]["message"]
    assert "SELECT" in verdict["site-a"]["sql"].upper() and plan["first_round"]["type"] == "cox_round"
    spec_file = Path(tempfile.mkdtemp()) / "cox.yaml"
    spec_file.write_text(yaml_text(COX_SPEC))
    dry = run_cli(network, "query", "dry-run", str(spec_file), "--sql")
    assert dry.returncode == 3, dry.stderr  # a site would refuse
    line = next(x for x in dry.stdout.splitlines() if x.startswith("site-c"))
    assert "would refuse NOT_ALLOWED" in line and "cox_round" in line
    assert "-- site-a (sqlite)" in dry.stdout and "Nothing was run or released" in dry.stdout

    # watch it live: each site's answer to each Newton round shows while the job runs
    job_id = network.submit(COX_SPEC)
    browser.get(f"{network.api}/console/jobs/{job_id}")
    seen = set()

    def progress(driver):
        rows, status = driver.execute_script(  # one read: the page swaps rows in as they change
            "return [[...document.querySelectorAll('#job-sites tbody tr')].map(r => r.innerText),"
            " (document.getElementById('job-status') || {}).textContent]")
        finished = status in ("done", "partial", "failed")
        if not finished and not any("round " in text for text in seen) and any("round " in text for text in rows):
            shot(driver, "11-job-cox-running")  # the rounds going by
        seen.update(rows)
        return finished

    wait(browser, progress, timeout=120, what="the Cox job to finish")
    job = network.call("GET", f"/v1/jobs/{job_id}").json()
    assert job["status"] == "partial" == by_id(browser, "job-status").text
    assert any("refused" in text and "NOT_ALLOWED" in text for text in seen)  # site-c, live as well
    row = wait(browser, lambda d: d.find_elements("css selector", "#job-sites tr[data-site=site-c]"), what="sites")[0]
    assert "refused" in row.text and "NOT_ALLOWED" in row.text and "cox_round" in row.text
    assert "exp(coef)" in by_id(browser, "table-coefficients").text
    wait(browser, lambda d: d.find_elements("css selector", "#figure[data-drawn=true]"), what="the forest plot")
    shot(browser, "12-job-cox-partial")

    text = run_cli(network, "result", job["job_id"])
    assert "site-c  refused" in text.stdout and "NOT_ALLOWED" in text.stdout
    as_json = json.loads(run_cli(network, "result", job["job_id"], "--json").stdout)
    assert {s["site"]: s["code"] for s in as_json["per_site"]}["site-c"] == "NOT_ALLOWED"
    lines = list(csv.DictReader(io.StringIO(network.call("GET", f"/v1/jobs/{job['job_id']}/result.csv").text)))
    refusal = [r for r in lines if r["source"] == "site-c"]
    assert refusal and refusal[0]["status"] == "refused" and "NOT_ALLOWED" in refusal[0]["note"]
    # the pooled Cox fit over the two sites that answered equals lifelines on their persons
    people = all_persons()
    people = people[people["site"] != "site-c"].assign(age=lambda d: 2016 - d["yob"] - 1)
    reference = CoxPHFitter().fit(people[["time", "event", "age"]], "time", "event", fit_options={"precision": 1e-12}).summary
    coefficient = job["pooled"]["coefficients"][0]
    assert coefficient["coef"] == pytest.approx(reference.loc["age", "coef"], rel=1e-6)
    assert coefficient["se"] == pytest.approx(reference.loc["age", "se(coef)"], rel=1e-6)


# ---------------------------------------------------------------------------- the operator's path


def test_operator_adds_revokes_enrols_and_reads_the_audit(network, browser, downloads):
    sign_in(browser, network, network.admin_token)
    wait(browser, lambda d: d.find_elements("id", "who-name"), what="sign-in")
    browser.get(f"{network.api}/console/operator/researchers")
    by_id(browser, "new-name").send_keys("bob")
    by_id(browser, "new-expiry").clear()
    by_id(browser, "new-expiry").send_keys("30")
    by_id(browser, "new-name").submit()
    token = wait(browser, lambda d: d.find_elements("id", "new-token"), what="the new token")[0].get_attribute("value")
    assert token.startswith("rf_") and network.call("GET", "/v1/whoami", token=token).json()["name"] == "bob"
    wait(browser, lambda d: "bob" in d.find_element("id", "researchers-table").text, what="the list")
    shot(browser, "13-operator-researchers")

    # bob signs in elsewhere; revoking his token ends that session too
    bob = httpx.Client(base_url=network.api, follow_redirects=False)
    assert bob.post("/console/sign-in", data={"token": token}).status_code == 303
    assert bob.get("/console/jobs").status_code == 200
    assert bob.post("/v1/specs/validate", json={"text": "analysis: {type: count}"}).status_code == 401  # no CSRF header
    browser.find_element("css selector", "button.revoke-researcher[data-name=bob]").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: "revoked" in d.find_element("css selector", "tr[data-researcher=bob]").text, what="revocation")
    assert network.call("GET", "/v1/whoami", token=token).status_code == 401
    assert "/console/sign-in" in bob.get("/console/jobs").headers["location"]

    browser.get(f"{network.api}/console/operator/sites")
    by_id(browser, "site-name").send_keys("site-d")
    by_id(browser, "site-name").submit()
    wait(browser, lambda d: d.find_elements("id", "bundle-link"), what="the enrolment")
    bundle = downloads / "radfed-site-site-d.zip"
    deadline = time.monotonic() + 30
    while not bundle.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    names = zipfile.ZipFile(bundle).namelist()
    assert {"site-d/node.toml", "site-d/site.key", "site-d/bus.password"} <= set(names)
    assert "site-d" in network.home.store.public_keys()
    shot(browser, "14-operator-enrol")

    browser.get(f"{network.api}/console/operator/audit")
    audit = by_id(browser, "audit-table").text
    assert "intact" in by_id(browser, "audit-state").text
    for action in ("console.sign_in", "researcher.add", "researcher.revoke", "site.enrol", "job.submit"):
        assert action in audit
    shot(browser, "15-operator-audit")
    browser.get(f"{network.api}/console/jobs?all=true")
    assert "alice" in by_id(browser, "jobs-table").text


# ---------------------------------------------------------------------------- notebook API and text


def test_notebook_api_matches_lifelines(network, monkeypatch):
    from coordinator.notebook import Client, JobFailed, PartialResult, SpecError

    client = Client(network.api, network.token)
    km = client.run(yaml_text(KM_SPEC))
    people = all_persons()
    for group, part in people.groupby("sex"):
        reference = KaplanMeierFitter().fit(part["time"], part["event"])
        mine = km.survival_function_[group]
        assert np.allclose(mine.to_numpy(), reference.survival_function_at_times(mine.index).to_numpy(), rtol=1e-6)
        low = km.confidence_interval_[f"{group}_lower_0.95"]
        ci = reference.confidence_interval_.reindex(low.index, method="ffill")
        assert np.allclose(low.to_numpy()[1:], ci.iloc[1:, 0].to_numpy(), rtol=1e-6)
    assert km.per_site.loc["site-c", "status"] == "ok" and km.provenance["spec_hash"] == km.spec_hash

    plan = client.plan(COX_SPEC)
    assert plan.loc["site-a", "allowed"] and not plan.loc["site-c", "allowed"]
    assert plan.loc["site-c", "refusal"] == "NOT_ALLOWED" and plan.attrs["first_round"]["type"] == "cox_round"
    with pytest.warns(PartialResult, match="site-c refused NOT_ALLOWED"):
        cox = client.run(COX_SPEC)
    assert cox.status == "partial" and cox.per_site.loc["site-c", "code"] == "NOT_ALLOWED"
    assert list(cox.summary.columns[:3]) == ["coef", "exp(coef)", "se(coef)"]
    with pytest.raises(JobFailed) as failed:
        client.run(COX_SPEC, require_all=True)
    assert "NOT_ALLOWED" in failed.value.reasons["site-c"]
    with pytest.raises(SpecError, match="unknown variable 'sexx'"):
        client.run({**CROSSTAB_SPEC, "analysis": {"type": "crosstab", "by": ["sexx"]}})
    crosstab = client.run(CROSSTAB_SPEC)
    assert int(crosstab.summary["n"].sum()) == len(people)
    assert sum(int(f["n"].sum()) for f in crosstab.site_frames.values()) == len(people)


def test_the_notebook_in_docs_runs(network, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RADFED_URL", network.api)
    monkeypatch.setenv("RADFED_TOKEN", network.token)
    notebook = nbformat.read(REPO / "docs" / "notebook.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "\n".join(str(o.get("text") or (o.get("data") or {}).get("text/plain") or "")
                        for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "exp(coef)" in outputs and "KM_estimate" not in outputs and "timeline" in outputs
    assert "SpecError: analysis.by[0]: unknown variable 'sexx'" in outputs
    assert "JobFailed:" in outputs and "UNKNOWN_CODE" in outputs
    assert "NOT_ALLOWED" in outputs  # site-c's refusal of the Cox rounds, in per_site
