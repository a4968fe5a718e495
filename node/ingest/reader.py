"""Reading FHIR R4 input as a stream of resources, in dependency order, without holding an export.

Two shapes arrive (FHIR R4 §2.36 Bundle; FHIR Bulk Data Access IG v2 "Bulk Data Output File"):

* **NDJSON** (``.ndjson``, ``.ndjson.gz``): one resource per line, one resource type per file.  Files
  are read line by line (gzip streamed), so memory does not grow with the file.  The export's
  ``log.ndjson`` and ``manifest.json`` describe the export and hold no resources: they are
  recognised and passed over (counted as export metadata, never as data).
* **Bundles** (``.json``) of type transaction, batch, collection or searchset.  Its ``urn:uuid:`` /
  absolute ``fullUrl`` references are rewritten to ``Type/id`` so they resolve like any other, and
  its entries are sorted into dependency order.  A Bundle is one JSON document: a small one (a
  Synthea per-patient Bundle) is read whole; one above :data:`STREAM_BYTES` is read as a stream,
  its entries waiting in spool files on disk (:func:`read_big_bundle`), so memory does not grow
  with it either.

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
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ijson
import orjson

#: Resource types in the order a run loads them (others after, in the order met).
DEPENDENCY_ORDER = (
    "Organization", "Location", "Practitioner", "PractitionerRole", "Patient", "Encounter", "Specimen",
    "Device", "Medication", "Condition", "Procedure", "ImagingStudy", "Observation", "DiagnosticReport",
)
_RANK = {name: rank for rank, name in enumerate(DEPENDENCY_ORDER)}
BUNDLE_TYPES = {"transaction", "batch", "collection", "searchset"}

#: Bundle files larger than this are read as a stream (:func:`read_big_bundle`), smaller ones whole
#: (:func:`read_whole_bundle`: a per-patient Bundle, one parse).
STREAM_BYTES = 16 << 20
#: Where a streamed Bundle's entries wait (``None``: the system's temporary folder, ``TMPDIR``).
SPOOL_DIR: str | None = None

# Stable reason codes of input that never becomes a resource.
NOT_JSON = "NOT_JSON"
NOT_A_RESOURCE = "NOT_A_RESOURCE"
BUNDLE_TYPE = "UNSUPPORTED_BUNDLE"


_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')


#: Bytes of a Bundle file :func:`bundle_rank` scans at a time.
SCAN_BYTES = 4 << 20
_RESOURCE_TYPE_KEY = b'"resourceType"'
#: The longest match cut at a chunk's end that :func:`bundle_rank` carries into the next chunk.
_SCAN_CARRY = 4096


def bundle_rank(path: Path) -> int:
    """The load-order rank of the first-loading type a Bundle file holds (a byte scan, no parse), the
    file read :data:`SCAN_BYTES` at a time: a ``"resourceType": "X"`` cut at a chunk's end is found
    in the next chunk, which starts where it starts."""
    types: set[bytes] = set()
    carry = b""
    with open(path, "rb", buffering=0) as handle:
        while True:
            data = handle.read(SCAN_BYTES)
            chunk = carry + data
            end = 0
            for match in _RESOURCE_TYPE.finditer(chunk):
                types.add(match.group(1))
                end = match.end()
            if not data:
                break
            # from the last "resourceType" without its value yet, else from where one may start
            cut = chunk.rfind(_RESOURCE_TYPE_KEY, end)
            if cut < 0 or cut < len(chunk) - _SCAN_CARRY:
                cut = max(end, len(chunk) - len(_RESOURCE_TYPE_KEY) + 1)
            carry = chunk[cut:]
    names = {t.decode() for t in types} - {"Bundle"}
    return min((rank(t) for t in names), default=len(DEPENDENCY_ORDER))


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


def streams(input_file: InputFile) -> bool:
    """Whether a Bundle file is read as a stream (:func:`read_big_bundle`) rather than whole."""
    return input_file.kind == "bundle" and input_file.size > STREAM_BYTES


def read_bundle(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The entries of a Bundle file, references resolved and sorted into dependency order: a file
    above :data:`STREAM_BYTES` as a stream (:func:`read_big_bundle`), a smaller one whole
    (:func:`read_whole_bundle`).  Both give the same items."""
    if streams(input_file):
        return read_big_bundle(input_file, progress)
    return read_whole_bundle(input_file, progress)


def _bundle_entry(source_file: str, number: int, entry, targets) -> Item:
    """Entry ``number`` (1-based) of a Bundle as an :class:`Item`: its resource, or NOT_A_RESOURCE.

    An entry without an ``id`` takes the uuid of its ``urn:uuid:`` fullUrl (a transaction's POSTed
    resources), so its rows are stable too; ``targets`` learns the entry's fullUrl -> ``Type/id``
    (FHIR R4 §2.36.4.1: a reference to a fullUrl resolves to that entry)."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return Item(source_file, number, orjson.dumps(entry), error=(NOT_A_RESOURCE, f"entry {number} has no resource"))
    full_url = entry.get("fullUrl") or ""
    if not resource.get("id") and full_url.startswith("urn:uuid:"):
        resource["id"] = full_url[len("urn:uuid:"):]
    if full_url and resource.get("id"):
        targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
    return Item(source_file, number, None, resource)


def read_whole_bundle(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The entries of a Bundle file read whole (one ``orjson.loads``): what a small Bundle (Synthea's
    per-patient ones) costs least as.  Entry ``n`` (1-based) is reported as line ``n``."""
    path = input_file.path
    data = path.read_bytes()
    if progress is not None:
        progress.done += len(data)
    yield from _whole_bundle(input_file, data, data)


def _whole_bundle(input_file: InputFile, data: bytes, payload: bytes | None) -> Iterator[Item]:
    """:func:`read_whole_bundle` of ``data``; ``payload``: what a file-level error quarantines
    (``None``: the file is too big to copy, :func:`_file_error`)."""
    path = input_file.path
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield _file_error(input_file, NOT_JSON, f"file is not JSON ({exc})", payload)
        return
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        if isinstance(bundle, dict) and kind:
            # A single resource in a .json file is loaded like a one-entry collection.
            bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bundle}]}
        else:
            yield _file_error(input_file, NOT_A_RESOURCE, "file is not a FHIR resource or Bundle", payload)
            return
    if bundle.get("type") not in BUNDLE_TYPES:
        yield _file_error(input_file, BUNDLE_TYPE, _bundle_type_reason(bundle.get("type")), payload)
        return
    entries = []
    targets: dict[str, str] = {}
    for number, entry in enumerate(bundle.get("entry") or [], 1):
        item = _bundle_entry(str(path), number, entry, targets)
        if item.error is not None:
            yield item
            continue
        entries.append((number, item.resource))
    for _number, resource in entries:
        _rewrite_references(resource, targets)
    entries.sort(key=lambda e: (rank(e[1]["resourceType"]), e[0]))
    for number, resource in entries:
        yield Item(str(path), number, None, resource)


def _bundle_type_reason(bundle_type) -> str:
    return f"Bundle.type {bundle_type!r} is not one of {sorted(BUNDLE_TYPES)}"


#: Bytes of a streamed Bundle that a file-level error quarantines (the file itself is not copied).
PAYLOAD_HEAD = 4096


def _file_error(input_file: InputFile, code: str, reason: str, payload: bytes | None) -> Item:
    """The item of a Bundle file that gives no entries at all (line 0).  ``payload`` ``None``: a
    streamed file, too big to copy into the quarantine: its first :data:`PAYLOAD_HEAD` bytes are
    quarantined and the reason says where the file is."""
    path = input_file.path
    if payload is None:
        with open(path, "rb") as handle:
            payload = handle.read(PAYLOAD_HEAD)
        reason = (f"{reason}; the file ({input_file.size:,} bytes) is too big to copy into the quarantine: "
                  f"its first {len(payload):,} bytes are kept, the file is {path.resolve()}")
    return Item(str(path), 0, payload, error=(code, reason))


class _Targets:
    """fullUrl -> ``Type/id`` of a streamed Bundle's entries (what :func:`_rewrite_references` looks
    up), held compactly: an entry whose fullUrl is ``urn:uuid:<its id>`` (a transaction's, and every
    entry without an id) keeps only its type, interned, next to the fullUrl (~150 bytes an entry)."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: dict[str, str] = {}

    def __setitem__(self, full_url: str, target: str) -> None:
        resource_type, _, resource_id = target.partition("/")
        if full_url.startswith("urn:uuid:") and full_url[9:] == resource_id and "/" not in resource_id:
            target = sys.intern(resource_type)
        self._found[full_url] = target

    def __contains__(self, full_url: str) -> bool:
        return full_url in self._found

    def __getitem__(self, full_url: str) -> str:
        target = self._found[full_url]
        return target if "/" in target else f"{target}/{full_url[9:]}"

    def __len__(self) -> int:
        return len(self._found)


class _Counted:
    """A file read through ``read``, the bytes counted as progress."""

    def __init__(self, handle, progress: Progress | None):
        self._handle, self._progress = handle, progress

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._progress is not None:
            self._progress.done += len(data)
        return data


def entry_line(number: int, resource: bytes) -> bytes:
    """Entry ``number`` of a streamed Bundle as one line ``<number> <resource JSON>\\n``: how entries
    wait in the spool files and travel to workers (:func:`node.ingest.worker.bundle_entries`);
    ``orjson.dumps`` never writes a newline."""
    return b"%d %b\n" % (number, resource)


def read_big_bundle(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The entries of a big Bundle file as :func:`read_whole_bundle` gives them, without holding the
    file: memory holds the fullUrl -> ``Type/id`` map (~150 bytes an entry, :class:`_Targets`) and one
    entry at a time, whatever the size of the file.

    One pass with ijson (its C backend, yajl2_c, where installed) reads the entries one by one: each
    resource gets its id (:func:`_bundle_entry`), its fullUrl goes into the map, and its bytes wait
    in the spool file of its load-order rank (one file per rank, in a temporary folder on disk,
    removed at the end even on error); an entry without a resource waits in a spool of its own.
    ``resourceType`` and ``type`` may come after ``entry`` in the JSON object, so the file's verdict
    is known at the end of the pass: then, as for a whole file, the entries without a resource come
    first, then the resources by rank and entry number, each parsed, its references rewritten (a
    forward reference resolves too) and given out.  A file that is not JSON (also when it breaks
    midway: what was spooled is dropped), not a Bundle or of an unsupported type gives only its
    error, as a whole file would; its payload is the file's first :data:`PAYLOAD_HEAD` bytes
    (:func:`_file_error`).  A single big resource that is not a Bundle is read whole (it is held
    whole to be mapped anyway) and loaded as a one-entry collection.

    Where yajl and orjson judge JSON differently a big file may get another verdict than a small
    one: an integer beyond 64 bits is NOT_JSON here (orjson reads it as a float), and a lone
    surrogate escape (``"\\ud800"``) is read as ``?`` here (orjson rejects the file).
    """
    path = input_file.path
    spools: dict[int, object] = {}  # rank -> its spool file; -1: the entries without a resource
    folder = tempfile.mkdtemp(prefix="radfed-bundle-", dir=SPOOL_DIR)
    try:
        targets = _Targets()
        head: dict[str, object] = {}

        def spool(rank_of: int, line: bytes) -> None:
            handle = spools.get(rank_of)
            if handle is None:
                handle = spools[rank_of] = open(os.path.join(folder, str(rank_of)), "w+b", buffering=1 << 16)
            handle.write(line)

        with open(path, "rb", buffering=0) as handle:
            try:
                entries = ijson.items(_head_events(_Counted(handle, progress), head), "entry.item")
                for number, entry in enumerate(entries, 1):
                    item = _bundle_entry(str(path), number, entry, targets)
                    if item.error is not None:
                        spool(-1, entry_line(number, item.raw))
                    else:
                        spool(rank(item.resource["resourceType"]), entry_line(number, orjson.dumps(item.resource)))
            except (ijson.JSONError, UnicodeDecodeError, orjson.JSONEncodeError) as exc:
                yield _file_error(input_file, NOT_JSON, f"file is not JSON ({_parse_error(exc)})", None)
                return
        if head.get("top") != "start_map":
            yield _file_error(input_file, NOT_A_RESOURCE, "file is not a FHIR resource or Bundle", None)
            return
        if head.get("resourceType") != "Bundle":  # a single resource, or a JSON object that is none
            for spooled in spools.values():
                spooled.close()
            spools.clear()
            yield from _whole_bundle(input_file, path.read_bytes(), None)
            return
        if head.get("type") not in BUNDLE_TYPES:
            yield _file_error(input_file, BUNDLE_TYPE, _bundle_type_reason(head.get("type")), None)
            return
        source_file = str(path)
        for rank_of in sorted(spools):
            spooled = spools[rank_of]
            spooled.seek(0)
            for line in spooled:
                number, _, data = line[:-1].partition(b" ")
                if rank_of < 0:
                    yield Item(source_file, int(number), data, error=(NOT_A_RESOURCE, f"entry {int(number)} has no resource"))
                    continue
                resource = orjson.loads(data)
                _rewrite_references(resource, targets)
                yield Item(source_file, int(number), None, resource)
            spooled.close()
    finally:
        for spooled in spools.values():
            spooled.close()
        shutil.rmtree(folder, ignore_errors=True)


def bundle_blocks(input_file: InputFile, progress: Progress | None = None,
                  size: int = 1 << 21) -> Iterator[tuple[int, int, bytes] | Item]:
    """A big Bundle's entries (:func:`read_big_bundle`) as blocks of :func:`entry_line` lines, one
    resource each (references rewritten), about ``size`` bytes a block and never two load-order ranks
    in one: ``(rank, number of the block's first entry, bytes)`` — what worker processes map, the
    loading process holding no more of the file than the blocks out (:mod:`node.ingest.pool`).  An
    entry without a resource, or the file's error, comes as its :class:`Item`, in its place."""
    lines: list[bytes] = []
    length = block_rank = first = 0
    for item in read_big_bundle(input_file, progress):
        if item.error is not None:
            yield item
            continue
        entry_rank = rank(item.resource["resourceType"])
        if lines and (entry_rank != block_rank or length >= size):
            yield block_rank, first, b"".join(lines)
            lines, length = [], 0
        if not lines:
            block_rank, first = entry_rank, item.line
        line = entry_line(item.line, orjson.dumps(item.resource))
        lines.append(line)
        length += len(line)
    if lines:
        yield block_rank, first, b"".join(lines)


def _parse_error(exc: Exception) -> str:
    """The first line of yajl's message (the rest draws the place in the text)."""
    message = exc.args[0] if exc.args else exc
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message).strip().splitlines()[0] if str(message).strip() else type(exc).__name__


class _Container:
    """A top-level ``resourceType`` / ``type`` that is an object or an array (never a Bundle's)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return "{...}" if self.kind == "start_map" else "[...]"


def _head_events(source, head: dict) -> Iterator[tuple]:
    """ijson's events of ``source``, passed on, noting in ``head`` the top-level value's kind
    (``top``: its first event) and the last top-level ``resourceType`` and ``type`` (as
    ``orjson.loads`` keeps the last of a repeated key)."""
    events = ijson.parse(source, use_float=True)
    for event in events:
        head["top"] = event[1]
        yield event
        break
    for event in events:
        prefix = event[0]
        if prefix == "type" or prefix == "resourceType":
            kind = event[1]
            if kind == "start_map" or kind == "start_array":
                head[prefix] = _Container(kind)
            elif kind != "map_key" and kind != "end_map" and kind != "end_array":
                head[prefix] = event[2]  # a string, number, boolean or null
        yield event


def read(input_file: InputFile, progress: Progress | None = None) -> Iterator[Item]:
    """The items of one input file (nothing for export metadata)."""
    if input_file.kind == "ndjson":
        return read_ndjson(input_file, progress)
    if input_file.kind == "bundle":
        return read_bundle(input_file, progress)
    if progress is not None:
        progress.done += input_file.size
    return iter(())
