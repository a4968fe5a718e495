"""Writing a spec: its JSON Schema, example specs, validation as you type, and the dry run.

    GET  /v1/specs/schema           the spec's JSON Schema (draft 2020-12, from cdm.spec)
    GET  /v1/specs/examples         example specs to start from (docs/examples/*.yaml)
    POST /v1/specs/validate         {"text": "<YAML or JSON>"} or {"spec": {...}}: always 200, with
                                    {"valid", "problems": [{"path", "message", "line"}], ...}
    POST /v1/specs/plan             {"spec" | "text", "sites"?}: the dry run, what each site would run
                                    and whether its policy allows it; nothing is released

Validation is the nodes' own (:func:`cdm.spec.parse_spec`, the model the JSON Schema is exported
from, plus its cross-field checks), so a spec that validates here is one every node can parse.
Each problem carries the line of the YAML/JSON text it points at, for the editor.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import yaml
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cdm.errors import http_status_of
from cdm.spec import MAX_SPEC_BYTES, SpecError, parse_spec, spec_json_schema
from cdm.wire import spec_hash
from coordinator.service import SubmitError, split_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
#: a spec-wide check names its field inside the message: "analysis.by[0]: unknown variable ..."
FIELD_IN_MESSAGE = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.+)$", re.S)


class SpecText(BaseModel):
    text: str | None = Field(default=None, max_length=MAX_SPEC_BYTES)
    spec: dict | None = None
    sites: list[str] | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)


@lru_cache(maxsize=1)
def examples() -> list[dict]:
    """``[{"name", "title", "analysis", "text"}]`` from docs/examples (its first comment line is the
    title); an installation without the docs folder offers the demo's specs instead."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []:
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else ""
        try:
            kind = (yaml.safe_load(text).get("analysis") or {}).get("type")
        except (yaml.YAMLError, AttributeError):
            continue
        out.append({"name": path.stem, "title": first.lstrip("# ").strip() or path.stem, "analysis": kind, "text": text})
    if not out:
        from coordinator.demo_specs import specs

        for i, (title, spec) in enumerate(specs({}), 1):
            out.append({"name": f"demo-{i}", "title": title, "analysis": spec["analysis"]["type"],
                        "text": f"# {title}\n" + yaml.safe_dump(spec, sort_keys=False)})
    return out


def _lines(text: str) -> dict[str, int]:
    """``{"analysis.by[0]": line}`` for every value in a YAML/JSON text (1-based lines)."""
    out: dict[str, int] = {}

    def walk(node, path: str) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{path}.{key.value}" if path else str(key.value)
                out.setdefault(child, key.start_mark.line + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                walk(value, f"{path}[{i}]")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out
    if root is not None:
        walk(root, "")
    return out


def _join(path: str, part: str) -> str:
    return f"{path}{part}" if part.startswith("[") else (f"{path}.{part}" if path else part)


def _locate(path: str, lines: dict[str, int], data) -> tuple[str, int | None]:
    """(the path as the researcher wrote it, its line or its nearest written ancestor's line).

    pydantic puts the tag of a tagged union into paths (``analysis.km.bin_days`` for ``bin_days`` of
    a ``type: km`` analysis): a part naming the ``type``/``kind`` of the mapping it is in is dropped."""
    parts = [p for p in path.replace("[", ".[").split(".") if p] if path else []
    node, current, line = data, "", lines.get("")
    for part in parts:
        if isinstance(node, dict) and part not in node and part in (node.get("type"), node.get("kind")):
            continue  # a union tag
        current = _join(current, part)
        line = lines.get(current, line)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.startswith("[") and part[1:-1].isdigit() and int(part[1:-1]) < len(node):
            node = node[int(part[1:-1])]
        else:
            node = None
    return current, line


def check(body: SpecText) -> dict:
    """Validation as the editor shows it: never raises for a bad spec, says what and where."""
    text = body.text
    if text is None:
        if body.spec is None:
            return {"valid": False, "problems": [{"path": "", "message": "no spec given", "line": None}]}
        text = json.dumps(body.spec, indent=2)
    problems: list[dict] = []
    lines = _lines(text)
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"valid": False, "problems": [{"path": "", "message": f"not valid YAML or JSON: {first}", "line": line}]}
    if not isinstance(data, dict):
        return {"valid": False, "problems": [{"path": "", "message": "a spec is a mapping with cohort, variables and analysis",
                                              "line": 1}]}
    analysis = data.get("analysis")
    kind = analysis.get("type") if isinstance(analysis, dict) and isinstance(analysis.get("type"), str) else None
    try:
        node_spec, federation = split_spec(data)
        spec = parse_spec(node_spec)
    except SubmitError as exc:
        return {"valid": False, "problems": [{"path": "federation", "message": str(exc), "line": lines.get("federation")}]}
    except SpecError as exc:
        for path, message in exc.problems:
            for part in message.split("; ") if not path else [message]:
                found = FIELD_IN_MESSAGE.match(part) if not path else None
                where, why = (found.group(1), found.group(2)) if found else (path, part)
                where, line = _locate(where, lines, node_spec)
                problems.append({"path": where, "message": why, "line": line})
        return {"valid": False, "problems": problems, "analysis": kind}
    return {"valid": True, "problems": [], "analysis": spec.analysis.type, "spec": data,
            "spec_hash": spec_hash(node_spec), "federation": federation}


def _valid(body: SpecText) -> dict:
    """:func:`check`'s answer for a valid spec; else 400 naming every problem."""
    checked = check(body)
    if not checked["valid"]:
        raise HTTPException(400, "invalid spec: " + "; ".join(
            f"{p['path']}: {p['message']}" if p["path"] else p["message"] for p in checked["problems"]))
    return checked


def router(coordinator, access, visible_job) -> APIRouter:
    api = APIRouter(prefix="/v1/specs", dependencies=[Depends(access.caller)])  # every route needs a caller

    @api.get("/schema")
    async def schema():
        return spec_json_schema()

    @api.get("/examples")
    async def list_examples():
        return {"examples": examples()}

    @api.post("/validate")
    async def validate(body: SpecText):
        return check(body)

    @api.post("/plan")
    async def plan(body: SpecText, who: dict = Depends(access.caller)):
        from coordinator.dryrun import dry_run

        checked = _valid(body)
        try:
            result = await dry_run(coordinator, who["name"], checked["spec"], body.sites, body.timeout)
        except SubmitError as exc:
            raise HTTPException(http_status_of(exc), str(exc)) from None
        coordinator.store.audit(who["name"], "spec.plan", "ok", checked["spec_hash"][:16], checked["analysis"])
        return result

    return api
