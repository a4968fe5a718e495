"""A streaming writer for a FHIR R4 Bulk Data export (FHIR Bulk Data Access IG v2, §"Bulk Data Output").

One NDJSON file per resource type (``Patient.000.ndjson``, rolling over to ``.001`` after
``max_lines``), each line one resource, written as soon as it is built: memory stays bounded by the
number of open files, not the number of resources.  On close it writes what a server hands back with
the files: the complete-status manifest (``manifest.json``: transactionTime, request, output[] with
type/url/count, error[]) and an export event log (``log.ndjson``) in the shape of the Bulk Data
reference server's.  Timestamps come from the caller so output is reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import orjson

_OPTS = orjson.OPT_APPEND_NEWLINE


class BulkExportWriter:
    def __init__(self, folder: Path, *, base_url: str, transaction_time: str, max_lines: int = 200_000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.transaction_time = transaction_time
        self.max_lines = max_lines
        self._open: dict[str, tuple[BinaryIO, str]] = {}
        self._lines: dict[str, int] = {}  # lines in the current file of each type
        self._files: list[dict] = []  # closed files: {"type", "url", "count"}
        self._parts: dict[str, int] = {}
        self.resources = 0
        self.bytes = 0

    def _handle(self, resource_type: str) -> tuple[BinaryIO, str]:
        current = self._open.get(resource_type)
        if current and self._lines[resource_type] >= self.max_lines:
            self._close_file(resource_type)
            current = None
        if current is None:
            part = self._parts.get(resource_type, -1) + 1
            self._parts[resource_type] = part
            name = f"{resource_type}.{part:03d}.ndjson"
            current = (open(self.folder / name, "wb", buffering=1 << 16), name)
            self._open[resource_type] = current
            self._lines[resource_type] = 0
        return current

    def _close_file(self, resource_type: str) -> None:
        handle, name = self._open.pop(resource_type)
        handle.close()
        self._files.append({"type": resource_type, "url": f"{self.base_url}/{name}", "count": self._lines[resource_type]})

    def write(self, resource: dict) -> tuple[str, int]:
        """Append one resource; returns (file name, 1-based line number) for ground truth."""
        return self.write_raw(resource["resourceType"], orjson.dumps(resource, option=_OPTS))

    def write_raw(self, resource_type: str, line: bytes) -> tuple[str, int]:
        """Append one already-serialised line (also used to plant a malformed line on purpose)."""
        if not line.endswith(b"\n"):
            line += b"\n"
        handle, name = self._handle(resource_type)
        handle.write(line)
        self._lines[resource_type] += 1
        self.resources += 1
        self.bytes += len(line)
        return name, self._lines[resource_type]

    def close(self, export_id: str) -> dict:
        """Close every file and write ``manifest.json`` and ``log.ndjson``; returns the manifest."""
        for resource_type in sorted(self._open):
            self._close_file(resource_type)
        output = sorted(self._files, key=lambda f: f["url"])
        manifest = {
            "transactionTime": self.transaction_time,
            "request": f"{self.base_url}/$export?_type=" + ",".join(sorted({f["type"] for f in output})),
            "requiresAccessToken": False,
            "output": output,
            "error": [],
        }
        (self.folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        events = [
            ("kickoff", {"exportUrl": manifest["request"]}),
            ("status_complete", {"transactionTime": self.transaction_time}),
            ("manifest_complete", {"transactionTime": self.transaction_time, "totalOutputFileCount": len(output),
                                   "totalDeletedFileCount": 0, "totalErrorFileCount": 0, "totalManifests": 1}),
            ("export_complete", {"files": len(output), "resources": self.resources, "bytes": self.bytes,
                                 "attachments": None, "duration": 0}),
        ]
        with open(self.folder / "log.ndjson", "wb") as log:
            for event_id, detail in events:
                log.write(orjson.dumps({"exportId": export_id, "timestamp": self.transaction_time,
                                        "eventId": event_id, "eventDetail": detail}, option=_OPTS))
        return manifest
