"""FHIR R4 validation of one resource with the fhir.resources models.

fhir.resources 8.x ships R5 at its top level and R4B under ``fhir.resources.R4B``; R4B changed no
element of the resources radfed reads, so R4 input validates against the R4B models (DESIGN.md,
"Ingest").  Validation is pydantic's: cardinalities, required elements, choice types and primitive
formats (fhir.resources 8 does not check value-set bound codes: ``Observation.status``
``finalised`` passes).  Building the models costs ~7,000 resources/s on one core, so a resource
first meets :func:`node.ingest.precheck.conforms`, compiled from the same models' metadata and
6-9x faster in the same runs (benchmarks/README.md), which passes only what the models certainly
accept; everything else, every invalid resource among it, is judged by the models themselves, and
their message is the quarantine reason.
The engine also skips validation for resources whose content hash is unchanged since the last run,
and validates in its worker processes (:mod:`node.ingest.worker`).
"""

from __future__ import annotations

from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from node.ingest.precheck import conforms

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
    # The valid bulk first: conforms() passes only a resourceType that names a model (it checks the
    # value against the model's own name), so with an id nothing below could object.
    if conforms(resource) and isinstance(resource.get("id"), str) and resource["id"]:
        return None
    resource_type = resource.get("resourceType")
    if not is_resource_type(resource_type):
        return UNKNOWN_RESOURCE_TYPE, f"resourceType {resource_type!r} is not a FHIR R4 resource type"
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return MISSING_ID, f"{resource_type} has no id (needed for stable CDM ids and updates)"
    return model_problem(resource)


def model_problem(resource: dict) -> tuple[str, str] | None:
    """fhir.resources' own verdict on a resource of a known type with an id: ``(INVALID_RESOURCE,
    its first errors)`` or ``None`` (the reference :func:`problem` must agree with)."""
    resource_type = resource["resourceType"]
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


# -- in worker processes ----------------------------------------------------------------------------

def _warm() -> None:
    # Building the R4B model classes of the common types costs ~1 s; do it while the reader starts.
    for name in ("Patient", "Encounter", "Condition", "Observation", "Procedure", "DiagnosticReport"):
        _model(name)
        conforms({"resourceType": name})
    relaxed_gc()


def relaxed_gc() -> tuple[int, int, int]:
    """Make the cyclic garbage collector rare; returns the thresholds to restore.

    An ingest allocates millions of short-lived, acyclic objects (parsed JSON, pydantic models, row
    dicts) that reference counting frees.  With the default thresholds the collector repeatedly
    scans every live object — the interpreter's modules and the batch in flight — which cost ~20% of
    validation and halved the parse rate (measured on the benchmark export).  ``gc.freeze`` moves
    what exists now (modules, model classes) out of those scans; the higher thresholds keep
    collections, so memory still stays bounded if some code does create cycles.
    """
    import gc

    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return previous
