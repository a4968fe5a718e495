"""The status words and refusal codes (cdm/messages.py) are the only ones in use: every code a node
can refuse with is declared, a typo is an error where it is written, and records stay plain JSON."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cdm.errors import Refusal
from cdm.messages import FINISHED, JobStatus, RefusalCode, ReplyStatus, SiteStatus
from cdm.wire import STATUSES, canonical

REPO = Path(__file__).resolve().parent.parent


def test_every_refusal_code_written_in_the_code_is_declared():
    written = set()
    for path in [*REPO.glob("cdm/**/*.py"), *REPO.glob("node/**/*.py"), *REPO.glob("coordinator/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Refusal"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                written.add(node.args[0].value)
    assert written and written <= {c.value for c in RefusalCode}


def test_a_typo_in_a_refusal_code_fails_where_it_is_written():
    with pytest.raises(ValueError):
        Refusal("MIN_CEL", "typo")
    assert Refusal("MIN_CELL", "small").code is RefusalCode.MIN_CELL


def test_members_are_their_strings_on_the_wire():
    record = {"status": ReplyStatus.REFUSED, "code": RefusalCode.MIN_CELL, "job": JobStatus.PARTIAL}
    assert canonical(record) == canonical({"status": "refused", "code": "MIN_CELL", "job": "partial"})
    assert json.loads(json.dumps(record)) == {"status": "refused", "code": "MIN_CELL", "job": "partial"}
    assert STATUSES == ("ok", "refused", "error") and set(ReplyStatus) <= set(SiteStatus)
    assert FINISHED == ("done", "partial", "failed")
