"""`radfed-node init / status / vocab` as a site administrator runs them."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from node.cli import main

ATHENA = Path(__file__).parent / "fixtures" / "athena"
RADFED_NODE = Path(sys.executable).parent / "radfed-node"


def test_init_status_via_console_script(tmp_path):
    db = tmp_path / "site.sqlite"
    done = subprocess.run([RADFED_NODE, "--db", str(db), "init"], capture_output=True, text=True, check=True)
    assert "schema version 1" in done.stdout
    status = subprocess.run([RADFED_NODE, "--db", str(db), "status", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    assert report["schema_version"] == 1
    assert report["tables"]["person"] == 0 and report["tables"]["concept"] > 40


def test_init_on_postgresql_and_vocab_commands(pg_url):
    runner = CliRunner()
    assert runner.invoke(main, ["--db", pg_url, "init"]).exit_code == 0
    loaded = runner.invoke(main, ["--db", pg_url, "vocab", "load-athena", str(ATHENA)])
    assert loaded.exit_code == 0 and "concept: 8 rows" in loaded.output
    resolved = runner.invoke(main, ["--db", pg_url, "vocab", "resolve", "LOINC:2160-0", "SNOMED:0000"])
    assert resolved.output.splitlines() == ["LOINC:2160-0\t3016723\tcode known here, 0 rows",
                                            "SNOMED:0000\tunknown code: not in this node's vocabulary"]
    status = runner.invoke(main, ["--db", pg_url, "status"])
    assert status.exit_code == 0 and "concept" in status.output


def test_bad_database_url_is_one_clear_line(tmp_path):
    done = subprocess.run(
        [RADFED_NODE, "--db", "postgresql://nobody@127.0.0.1:1/x", "init"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot connect to CDM database")
    assert "Traceback" not in done.stderr


def test_status_without_cdm_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["--db", str(tmp_path / "empty.sqlite"), "status"])
    assert result.exit_code == 2 and "radfed-node init" in result.output


def test_node_toml_supplies_database(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[site]\nname = "site-x"\n[database]\nurl = "{tmp_path / "x.sqlite"}"\n')
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config), "init"]).exit_code == 0
    status = runner.invoke(main, ["--config", str(config), "status"])
    assert "site site-x" in status.output
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\n")
    result = runner.invoke(main, ["--config", str(broken), "status"])
    assert result.exit_code == 2 and "not valid TOML" in result.output
