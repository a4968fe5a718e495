"""Why a Circe expression is not translated: each refusal names the JSON path and a reason.

Reasons are stable sentences without the path or values in them, so ``radfed atlas check`` can
group a library's refusals by reason.  A refused definition is never run approximately.
"""

from __future__ import annotations

from cdm.errors import BadInput

UNSUPPORTED_DOMAIN = "criterion domain {name} is not translated"
UNSUPPORTED_ATTRIBUTE = "{domain} attribute {name} is not translated"
UNSUPPORTED_KEY = "{name} is not translated"
TYPE_FILTER = "{domain} {name} (filter by record type concepts) is not translated"
BAD_VALUE = "{name} has a value radfed does not know: {value}"
MISSING = "{name} is missing"
UNKNOWN_CODESET = "refers to a concept set the definition does not have"
CONCEPT_WITHOUT_CODE = "a concept without VOCABULARY_ID and CONCEPT_CODE cannot be resolved at other sites"
NOT_JSON = "not a Circe cohort expression (a JSON object with PrimaryCriteria)"


class Untranslatable(BadInput, ValueError):
    """A Circe expression radfed does not translate exactly.  ``problems``: (JSON path, reason)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {why}" if where else why for where, why in problems))

    def report(self, path, consequence: str) -> str:
        """What a command prints for a refused definition file: each problem by its JSON path, then
        ``consequence`` ("nothing was sent", "nothing was run")."""
        lines = [f"not translated: {where}: {why}" for where, why in self.problems]
        return "\n".join([*lines, f"{path}: refused ({len(self.problems)} problem(s)); {consequence}"])

    @property
    def reasons(self) -> list[str]:
        return list(dict.fromkeys(why for _, why in self.problems))
