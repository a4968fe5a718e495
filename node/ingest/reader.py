"""Reading FHIR R4 input as a stream of resources, in dependency order, without holding an export.

Two shapes arrive (FHIR R4 §2.36 Bundle; FHIR Bulk Data Access IG v2 "Bulk Data Output File"):

* **NDJSON** (``.ndjson``, ``.ndjson.gz``): one resource per line, one resource type per file.  Files
  are read line by line (gzip streamed), so memory does not grow with the file.  The export's
  ``log.ndjson`` and ``manifest.json`` describe the export and hold no resources: they are
  recognised and passed over (counted as export metadata, never as data).
* **Bundles** (``.json``) of type transaction, batch, collection or searchset.  A Bundle is one JSON
  document and is read whole; its ``urn:uuid:`` / absolute ``fullUrl`` references are rewritten to
  ``Type/id`` so they resolve like any other, and its entries are sorted into dependency order.

The run processes resources in :data:`DEPENDENCY_ORDER` — what others reference first — so a
reference inside one run meets its target already loaded: NDJSON files are ordered by their
resource type, Bundle entries by theirs, and Bundle files among the NDJSON files by the first type
they hold (a scan of their bytes for ``"resourceType"``), so Synthea's ``hospitalInformation`` /
``practitionerInformation`` Bundles load before the patient Bundles that reference them, and a
Bundle of Observations after the ``Patient`` NDJSON of the same run.  (The engine also retries, at
the end of a run, resources whose patient had not been loaded yet.)

Every yielded :class:`Item` carries its file and line (the entry index for a Bundle) so anything
quarantined can be found again.  A line that is not JSON is yielded with ``error`` set; the
stream goes on.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

#: Resource types in the order a run loads them (others after, in the order met).
DEPENDENCY_ORDER = (
    "Organization", "Location", "Practitioner", "PractitionerRole", "Patient", "Encounter", "Specimen",
    "Device", "Medication", "Condition", "Procedure", "ImagingStudy", "Observation", "DiagnosticReport",
)
_RANK = {name: rank for rank, name in enumerate(DEPENDENCY_ORDER)}
BUNDLE_TYPES = {"transaction", "batch", "collection", "searchset"}

# Stable reason codes of input that never becomes a resource.
NOT_JSON = "NOT_JSON"
NOT_A_RESOURCE = "NOT_A_RESOURCE"
BUNDLE_TYPE = "UNSUPPORTED_BUNDLE"


_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')


def bundle_rank(path: Path) -> int:
    """The load-order rank of the first-loading type a Bundle file holds (a byte scan, no parse)."""
    types = {m.group(1).decode() for m in _RESOURCE_TYPE.finditer(path.read_bytes())} - {"Bundle"}
    return min((rank(t) for t in types), default=len(DEPENDENCY_ORDER))


def rank(resource_type: str | None) -> int:
    """Position of ``resource_type`` in the load order (unlisted types share the last place)."""
    return _RANK.get(resource_type or "", len(DEPENDENCY_ORDER))


@dataclass
class Item:
    """One line or Bundle entry: the parsed resource, or the error that stopped it."""

    source_file: str
    line: int
    raw: bytes | None
    resource: dict | None = None
    error: tuple[str, str] | None = None  # (reason code, reason)
    type_hint: str | None = None  # the file's resource type, for input that cannot say its own
    validated: bool = False  # passed validation already (a resource retried at the end of a run)


@dataclass
class InputFile:
    """A file found under the paths given: its kind (``ndjson``, ``bundle``, ``export-metadata``)."""

    path: Path
    kind: str
    resource_type: str | None = None
    rank: int = 0  # its place in the load order (:func:`discover`)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _is_ndjson(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".ndjson") or name.endswith(".ndjson.gz")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb", buffering=1 << 20)


def _first_line(path: Path) -> bytes:
    with _open(path) as handle:
        for line in handle:
            if line.strip():
                return line
    return b""


def _type_from_name(path: Path) -> str | None:
    """``Patient.000.ndjson`` / ``Patient.ndjson.gz`` -> ``Patient`` (the Bulk Data naming)."""
    stem = path.name.split(".", 1)[0]
    return stem if stem[:1].isupper() and stem.isalpha() else None


def classify(path: Path) -> InputFile | None:
    """What ``path`` is, or ``None`` for a file that is not FHIR input (skipped when walking a folder)."""
    name = path.name.lower()
    if name == "log.ndjson" or name == "manifest.json":
        return InputFile(path, "export-metadata")
    if _is_ndjson(path):
        resource_type = _type_from_name(path)
        if resource_type is None:
            try:
                resource_type = orjson.loads(_first_line(path)).get("resourceType")
            except (orjson.JSONDecodeError, AttributeError, OSError, EOFError):
                resource_type = None
        return InputFile(path, "ndjson", resource_type)
    if name.endswith(".json"):
        return InputFile(path, "bundle")
    return None


def discover(paths: Iterable[str | Path]) -> list[InputFile]:
    """The input files under ``paths`` in load order: by the rank of (the first) resource type they
    hold; at equal rank Bundles first, then by path.

    A path that does not exist raises ``FileNotFoundError``; a file given explicitly is read even
    if its name is unusual (as NDJSON unless it ends in ``.json``).
    """
    found: list[InputFile] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = [Path(root) / n for root, _dirs, names in os.walk(path) for n in sorted(names)]
            items = [c for c in (classify(p) for p in sorted(candidates)) if c is not None]
        elif path.is_file():
            item = classify(path) or InputFile(path, "ndjson", _type_from_name(path))
            items = [item]
        else:
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
        for item in items:
            if item.path.resolve() not in seen:
                seen.add(item.path.resolve())
                found.append(item)
    def load_order(f: InputFile):
        if f.kind == "export-metadata":
            return (0, 0, 0, str(f.path))
        f.rank = bundle_rank(f.path) if f.kind == "bundle" else rank(f.resource_type)
        return (1, f.rank, 0 if f.kind == "bundle" else 1, str(f.path))

    return sorted(found, key=load_order)


class Progress:
    """Bytes read so far over all files, for a progress bar (compressed bytes for ``.gz``)."""

    def __init__(self) -> None:
        self.done = 0


def ndjson_item(source_file: str, number: int, line: bytes, type_hint: str | None) -> Item | None:
    """Line ``number`` of an NDJSON file as an :class:`Item` (``None`` for a blank line)."""
    if not line.strip():
        return None
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return Item(source_file, number, line, error=(NOT_JSON, f"line {number} is not JSON ({exc})"),
                    type_hint=type_hint)
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return Item(source_file, number, line, error=(NOT_A_RESOURCE, f"line {number} has no resourceType"),
                    type_hint=type_hint)
    return Item(source_file, number, line, resource)


def _damaged(input_file: InputFile, number: int, exc: Exception) -> Item:
    """The item reporting a gzip stream cut short after line ``number``: what was read stays loaded."""
    return Item(str(input_file.path), number + 1, None,
                error=(NOT_JSON, f"compressed stream damaged after line {number}: {exc}"),
                type_hint=input_file.resource_type)


def read_ndjson(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """Every non-blank line of an NDJSON file as an :class:`Item` (1-based line numbers)."""
    path = input_file.path
    gz = path.name.lower().endswith(".gz")
    raw_handle = open(path, "rb", buffering=1 << 20)
    handle = gzip.GzipFile(fileobj=raw_handle, mode="rb") if gz else raw_handle
    last = 0
    try:
        number = 0
        while True:
            try:
                line = handle.readline()
            except (EOFError, gzip.BadGzipFile, OSError) as exc:
                yield _damaged(input_file, number, exc)
                return
            if not line:
                return
            number += 1
            if progress is not None:
                position = raw_handle.tell() if gz else last + len(line)
                progress.done += position - last
                last = position
            item = ndjson_item(str(path), number, line, input_file.resource_type)
            if item is not None:
                yield item
    finally:
        handle.close()
        if gz:
            raw_handle.close()


def ndjson_blocks(input_file: InputFile, progress: Progress | None = None,
                  size: int = 1 << 21) -> Iterator[tuple[int, bytes] | Item]:
    """An NDJSON file as blocks of whole lines, about ``size`` bytes each: ``(number of the block's
    first line, bytes)`` — what worker processes parse (:mod:`node.ingest.worker`).  A damaged gzip
    stream ends the blocks with the :class:`Item` :func:`read_ndjson` yields for it, after the same
    lines."""
    path = input_file.path
    if path.name.lower().endswith(".gz"):
        yield from _gzip_blocks(input_file, progress, size)
        return
    number, carry = 1, b""
    with open(path, "rb", buffering=0) as handle:
        while True:
            data = handle.read(size)
            if progress is not None:
                progress.done += len(data)
            if not data:
                if carry:
                    yield number, carry
                return
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: keep reading it
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield number, block
            number += block.count(b"\n")


def _gzip_blocks(input_file: InputFile, progress: Progress | None, size: int) -> Iterator[tuple[int, bytes] | Item]:
    # line by line, as read_ndjson reads: a damaged stream then keeps exactly the lines it keeps there
    path = input_file.path
    with open(path, "rb", buffering=1 << 20) as raw_handle, gzip.GzipFile(fileobj=raw_handle, mode="rb") as handle:
        number, lines, length, last = 0, [], 0, 0
        while True:
            try:
                line = handle.readline()
            except (EOFError, gzip.BadGzipFile, OSError) as exc:
                if lines:
                    yield number - len(lines) + 1, b"".join(lines)
                yield _damaged(input_file, number, exc)
                return
            if progress is not None:
                position = raw_handle.tell()
                progress.done += position - last
                last = position
            if line:
                number += 1
                lines.append(line)
                length += len(line)
            if lines and (not line or length >= size):
                yield number - len(lines) + 1, b"".join(lines)
                lines, length = [], 0
            if not line:
                return


def _rewrite_references(node, targets: dict[str, str]) -> None:
    """Replace every ``reference`` naming a Bundle entry's fullUrl by that entry's ``Type/id``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in targets:
                node[key] = targets[value]
            elif isinstance(value, (dict, list)):
                _rewrite_references(value, targets)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _rewrite_references(value, targets)


def read_bundle(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The entries of a Bundle file, references resolved and sorted into dependency order.

    Entry ``n`` (1-based) is reported as line ``n``.  An entry without an ``id`` takes the uuid of
    its ``urn:uuid:`` fullUrl (a transaction's POSTed resources), so its rows are stable too.
    """
    path = input_file.path
    data = path.read_bytes()
    if progress is not None:
        progress.done += len(data)
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield Item(str(path), 0, data, error=(NOT_JSON, f"file is not JSON ({exc})"))
        return
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        if isinstance(bundle, dict) and kind:
            # A single resource in a .json file is loaded like a one-entry collection.
            bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bundle}]}
        else:
            yield Item(str(path), 0, data, error=(NOT_A_RESOURCE, "file is not a FHIR resource or Bundle"))
            return
    if bundle.get("type") not in BUNDLE_TYPES:
        yield Item(str(path), 0, data, resource=None,
                   error=(BUNDLE_TYPE, f"Bundle.type {bundle.get('type')!r} is not one of {sorted(BUNDLE_TYPES)}"))
        return
    entries = []
    targets: dict[str, str] = {}
    for number, entry in enumerate(bundle.get("entry") or [], 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            yield Item(str(path), number, orjson.dumps(entry),
                       error=(NOT_A_RESOURCE, f"entry {number} has no resource"))
            continue
        full_url = entry.get("fullUrl") or ""
        if not resource.get("id") and full_url.startswith("urn:uuid:"):
            resource["id"] = full_url[len("urn:uuid:"):]
        if full_url and resource.get("id"):
            targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
        entries.append((number, resource))
    for _number, resource in entries:
        _rewrite_references(resource, targets)
    entries.sort(key=lambda e: (rank(e[1]["resourceType"]), e[0]))
    for number, resource in entries:
        yield Item(str(path), number, None, resource)


def read(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The items of one input file (nothing for export metadata)."""
    if input_file.kind == "ndjson":
        return read_ndjson(input_file, progress)
    if input_file.kind == "bundle":
        return read_bundle(input_file, progress)
    if progress is not None:
        progress.done += input_file.size
    return iter(())
