"""The site's audit log: one JSON line per request (accepted or refused), hash-chained.

Each entry carries ``seq``, ``prev`` (the previous entry's hash) and ``hash`` =
SHA-256(canonical JSON of the entry without ``hash``).  Editing an entry breaks its hash; removing one
breaks ``seq``/``prev`` of the next; removing the tail is caught by the head file (``audit.head``: the
last seq and hash), written after every append.  The log lives in the node's data folder, outside the
CDM; appends take an exclusive file lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
from pathlib import Path

GENESIS = "0" * 64


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str).encode()


def _digest(entry: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _last_line(f, block: int = 8192) -> bytes | None:
    """The last non-empty line of the open binary file ``f``, read backwards from its end: an append
    costs the same with ten entries or ten million (reading the whole log each time grew linearly)."""
    end = f.seek(0, 2)
    data, pos = b"", end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        lines = [line for line in data.split(b"\n") if line.strip()]
        if len(lines) >= 2 or (lines and pos == 0):
            return lines[-1]
    return None


class AuditLog:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "audit.jsonl"
        self.head = self.folder / "audit.head"

    @classmethod
    def for_config(cls, config) -> "AuditLog":
        return cls(config.data_dir if config is not None else Path.cwd() / "radfed-data")

    def append(self, **fields) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            last = _last_line(f)
            prev = json.loads(last) if last else {"seq": 0, "hash": GENESIS}
            entry = {"seq": prev["seq"] + 1, "prev": prev["hash"],
                     "ts": dt.datetime.now(dt.timezone.utc).isoformat(), **fields}
            entry["hash"] = _digest(entry)
            f.seek(0, 2)
            f.write((json.dumps(entry, sort_keys=True, default=str) + "\n").encode("utf-8"))
            f.flush()
            self.head.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}))
        return entry

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def verify(self) -> list[str]:
        """Problems found (empty when the chain is intact)."""
        problems, prev_hash, seq = [], GENESIS, 0
        try:
            entries = self.entries()
        except json.JSONDecodeError as exc:
            return [f"unreadable line: {exc}"]
        for e in entries:
            seq += 1
            if e.get("seq") != seq:
                problems.append(f"entry {e.get('seq')}: expected seq {seq} (an entry was removed or reordered)")
                seq = e.get("seq", seq) if isinstance(e.get("seq"), int) else seq
            if e.get("prev") != prev_hash:
                problems.append(f"entry {e.get('seq')}: does not chain to the previous entry")
            if e.get("hash") != _digest(e):
                problems.append(f"entry {e.get('seq')}: content does not match its hash (edited)")
            prev_hash = e.get("hash")
        if self.head.exists():
            head = json.loads(self.head.read_text())
            if head.get("seq") != (entries[-1]["seq"] if entries else 0) or head.get("hash") != (prev_hash if entries else head.get("hash")):
                problems.append(f"log ends before the recorded head (seq {head.get('seq')}): entries were removed")
        return problems
