"""FHIR R4 validation of one resource with the fhir.resources models.

fhir.resources 8.x ships R5 at its top level and R4B under ``fhir.resources.R4B``; R4B changed no
element of the resources radfed reads, so R4 input validates against the R4B models (DESIGN.md,
"Ingest").  Validation is pydantic's: cardinalities, required elements, primitive formats and
value-set bound codes (``Observation.status`` ``finalised`` fails).  It is the expensive step of an
ingest (~7,000 resources/s on one core, against ~150,000/s for parsing the JSON), which is why the
engine skips it for resources whose content hash is unchanged since the last run.
"""

from __future__ import annotations

from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

# Stable reason codes.
UNKNOWN_RESOURCE_TYPE = "UNKNOWN_RESOURCE_TYPE"
INVALID_RESOURCE = "INVALID_RESOURCE"
MISSING_ID = "MISSING_ID"

#: How many individual validation errors a quarantine reason lists.
_ERRORS_SHOWN = 5


@lru_cache(maxsize=None)
def _model(resource_type: str):
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None


def is_resource_type(resource_type: object) -> bool:
    """True when ``resource_type`` names an R4B resource (``Patiant`` does not)."""
    return isinstance(resource_type, str) and resource_type.isalpha() and _model(resource_type) is not None


def problem(resource: dict) -> tuple[str, str] | None:
    """``(reason code, reason)`` when ``resource`` is not a valid R4 resource with an id, else ``None``."""
    resource_type = resource.get("resourceType")
    if not is_resource_type(resource_type):
        return UNKNOWN_RESOURCE_TYPE, f"resourceType {resource_type!r} is not a FHIR R4 resource type"
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return MISSING_ID, f"{resource_type} has no id (needed for stable CDM ids and updates)"
    try:
        _model(resource_type).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or resource_type}: {e.get('msg')}"
            for e in errors[:_ERRORS_SHOWN]
        )
        more = f" (+{len(errors) - _ERRORS_SHOWN} more)" if len(errors) > _ERRORS_SHOWN else ""
        return INVALID_RESOURCE, f"{resource_type}/{resource['id']} fails FHIR R4 validation: {shown}{more}"
    except (TypeError, ValueError) as exc:  # model validators raise these for some malformed input
        return INVALID_RESOURCE, f"{resource_type}/{resource['id']} fails FHIR R4 validation: {exc}"
    return None
