"""``radfed atlas check DIR``: how much of a folder of ATLAS definitions translates, and why the
rest does not (refusals grouped by reason, with the definitions each reason blocks)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cdm.atlas.refusals import Untranslatable
from cdm.atlas.translate import load


@dataclass
class Coverage:
    translated: list[str] = field(default_factory=list)
    refused: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # file -> (path, reason)

    @property
    def total(self) -> int:
        return len(self.translated) + len(self.refused)

    def by_reason(self) -> list[tuple[str, list[str]]]:
        """(reason, definitions it blocks), the reason blocking most first."""
        blocked: dict[str, list[str]] = defaultdict(list)
        for name, problems in self.refused.items():
            for reason in dict.fromkeys(why for _, why in problems):
                blocked[reason].append(name)
        return sorted(blocked.items(), key=lambda item: (-len(item[1]), item[0]))

    def text(self, examples: int = 3) -> str:
        share = 100.0 * len(self.translated) / self.total if self.total else 0.0
        lines = [f"{len(self.translated):,} of {self.total:,} definitions translate exactly ({share:.1f} %); "
                 f"{len(self.refused):,} refused"]
        for reason, names in self.by_reason():
            first = names[0]
            where = next(p for p, why in self.refused[first] if why == reason)
            shown = ", ".join(names[:examples]) + (", ..." if len(names) > examples else "")
            lines.append(f"  {len(names):4d}  {reason}\n        e.g. {first}: {where}  [{shown}]")
        return "\n".join(lines)


def check_folder(folder: str | Path) -> Coverage:
    """Translate every ``*.json`` under ``folder`` (sorted by name)."""
    coverage = Coverage()
    paths = sorted(Path(folder).rglob("*.json"), key=lambda p: (len(p.stem), p.stem))
    for path in paths:
        name = str(path.relative_to(folder))
        try:
            load(path)
            coverage.translated.append(name)
        except Untranslatable as exc:
            coverage.refused[name] = exc.problems
    return coverage
