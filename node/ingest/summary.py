"""What one FHIR ingest run did, per resource type: the counts a site administrator reads at the end.

Every resource read ends in exactly one of: **loaded** (new), **updated** (content changed since
the run that loaded it: its rows were replaced), **unchanged** (same content hash: skipped, also
when it mapped to no row the first time),
**quarantined** (with a reason code; see the ``quarantine`` table) or **skipped** (a resource type
radfed keeps no CDM rows for, a type no mapper handles yet, or a resource that maps to no row — each
with its reason and the files it is in: radfed keeps no copy of them).  A reference to a resource not
loaded yet (a visit's Practitioner in a file loaded later) leaves its column empty and is **pending**
until that resource arrives, in this run or a later one; the summary says how many were filled in
and how many still wait.  **unmapped** counts codings that found no standard concept (site-local concepts
were created; ``radfed-node mapping-report`` lists them).  Nothing read is left out of the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

STATES = ("loaded", "updated", "unchanged", "quarantined", "skipped")
MAX_FILES_SHOWN = 3


@dataclass
class IngestSummary:
    files: int = 0
    metadata_files: int = 0
    #: resourceType -> state -> count (``?`` when the input had no readable resourceType).
    by_type: dict[str, Counter] = field(default_factory=dict)
    quarantined: Counter = field(default_factory=Counter)  # reason code -> count
    skipped: Counter = field(default_factory=Counter)  # "Type: reason" -> count
    unmapped: Counter = field(default_factory=Counter)  # resourceType -> codings without a standard concept
    #: "Type: reason" of skipped resources -> the files they are in (where an administrator finds them)
    skipped_files: dict[str, list[str]] = field(default_factory=dict)
    #: references filled by this run because their target arrived
    references_resolved: int = 0
    #: references still waiting for a resource not loaded, by its type (the CDM's, after the run)
    unresolved_references: dict[str, int] = field(default_factory=dict)
    persons_with_periods: int = 0
    seconds: float = 0.0
    #: (the timeout in seconds, what the run stopped waiting for) when it gave up waiting for other
    #: runs loading the same CDM (node.ingest.concurrency); ``None``: it never waited that long
    gave_up_waiting: tuple[float, list[str]] | None = None
    #: resources a worker process mapped that the loader mapped again, the worker's view of the run
    #: being behind (node.ingest.worker); a cost, not an outcome: not part of :meth:`as_dict`
    remapped: int = 0
    #: CPU seconds the worker processes spent, and the largest peak RSS of one (not in :meth:`as_dict`)
    worker_cpu_seconds: float = 0.0
    worker_peak_rss_mb: float = 0.0

    def count(self, resource_type: str | None, state: str, reason: str | None = None,
              source_file: str | None = None) -> None:
        resource_type = resource_type if isinstance(resource_type, str) and resource_type else "?"
        counts = self.by_type.get(resource_type)
        if counts is None:  # not setdefault: a Counter made for every resource costs more than the count
            counts = self.by_type[resource_type] = Counter()
        counts[state] += 1
        if state == "quarantined":
            self.quarantined[reason or "?"] += 1
        elif state == "skipped":
            self.skipped[f"{resource_type}: {reason}"] += 1
            if source_file is not None:
                files = self.skipped_files.setdefault(f"{resource_type}: {reason}", [])
                if source_file not in files and len(files) < MAX_FILES_SHOWN:
                    files.append(source_file)

    @property
    def partial(self) -> bool:
        """Something was quarantined, or references wait for resources not loaded: exit status 3."""
        return self.total("quarantined") > 0 or bool(self.unresolved_references)

    def total(self, state: str | None = None) -> int:
        return sum(sum(c.values()) if state is None else c[state] for c in self.by_type.values())

    @property
    def resources_per_second(self) -> float:
        return self.total() / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "export_metadata_files": self.metadata_files,
            "resources": self.total(),
            **{state: self.total(state) for state in STATES},
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skipped_files": dict(sorted(self.skipped_files.items())),
            "references_resolved": self.references_resolved,
            "unresolved_references": self.unresolved_references,
            "by_type": {t: {**{s: c[s] for s in STATES}, "unmapped_codes": self.unmapped[t]}
                        for t, c in sorted(self.by_type.items())},
            "unmapped_codes": sum(self.unmapped.values()),
            "observation_periods": self.persons_with_periods,
            "gave_up_waiting_for": self.gave_up_waiting[1] if self.gave_up_waiting else [],
            "seconds": round(self.seconds, 3),
        }

    def headline(self) -> str:
        """One line in the style of ``radfed-node ingest dicom``."""
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items()))
        return (f"{self.files} files: {self.total():,} resources, {self.total('loaded'):,} loaded, "
                f"{self.total('updated'):,} updated, {self.total('unchanged'):,} unchanged, "
                f"{self.total('quarantined'):,} quarantined" + (f" ({bad})" if bad else "")
                + f", {self.total('skipped'):,} skipped")

    def text(self) -> str:
        """The headline, a table per resource type, and the skip reasons."""
        lines = [self.headline()]
        if self.by_type:
            width = max(12, *(len(t) for t in self.by_type))
            lines.append(f"  {'type':<{width}} " + " ".join(f"{s:>11}" for s in (*STATES, "unmapped")))
            for resource_type, counts in sorted(self.by_type.items()):
                cells = [counts[s] for s in STATES] + [self.unmapped[resource_type]]
                lines.append(f"  {resource_type:<{width}} " + " ".join(f"{n:>11,}" for n in cells))
        for reason, n in sorted(self.skipped.items()):
            files = self.skipped_files.get(reason)
            where = f" (not copied into the CDM; they stay in {', '.join(files)})" if files else ""
            lines.append(f"  skipped {n:,}: {reason}{where}")
        if self.references_resolved:
            lines.append(f"  {self.references_resolved:,} references to resources loaded now were filled in")
        if self.unresolved_references:
            waiting = ", ".join(f"{t} {n:,}" for t, n in self.unresolved_references.items())
            lines.append(f"  references waiting for resources not loaded yet: {waiting} (their columns are "
                         "empty until those resources are loaded; then they are filled in)")
        if sum(self.unmapped.values()):
            lines.append(f"  {sum(self.unmapped.values()):,} codings without a standard concept "
                         "(see `radfed-node mapping-report`)")
        if self.gave_up_waiting:
            timeout, what = self.gave_up_waiting
            lines.append(f"  stopped waiting for other {' and '.join(what)} after {timeout:g} s (--wait-timeout): "
                         "what waited for their resources is quarantined (UNKNOWN_PATIENT) or left pending; "
                         "run the same command again once they have ended to load it")
        lines.append(f"  observation periods recomputed for {self.persons_with_periods:,} persons "
                     f"in {self.seconds:.1f} s")
        return "\n".join(lines)
