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
The engine also skips validation for resources whose content hash is unchanged since the last run.
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
    resource_type = resource.get("resourceType")
    if not is_resource_type(resource_type):
        return UNKNOWN_RESOURCE_TYPE, f"resourceType {resource_type!r} is not a FHIR R4 resource type"
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return MISSING_ID, f"{resource_type} has no id (needed for stable CDM ids and updates)"
    if conforms(resource):
        return None
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


# -- validation in worker processes ------------------------------------------------------------------

def problems_of(payloads: list[bytes]) -> list[tuple[str, str] | None]:
    """:func:`problem` of each JSON payload (the function a worker process runs)."""
    from orjson import loads

    return [problem(loads(p)) for p in payloads]


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


class ValidationPool:
    """Validates batches of resources in ``workers`` processes while the caller maps and writes.

    pydantic validation is CPU-bound Python (the GIL rules out threads), so the only way to use a
    second core is another process.  Resources travel as their JSON bytes (the NDJSON line itself),
    which is cheaper to send than a pickled dict; results come back in submission order, so the
    run's outcome does not depend on the number of workers.  ``workers=0`` validates in this process.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.own_share = 0.0
        self._pool = None
        if workers > 0:
            import multiprocessing

            # fork, not spawn: spawn re-imports the caller's __main__ in each worker, which breaks a
            # script without an ``if __name__ == "__main__"`` guard.  The engine creates the pool before
            # it opens connections or starts the progress bar's thread; workers touch neither and
            # leave through os._exit, so inherited database sockets are never used or closed by them.
            self._pool = multiprocessing.get_context("fork").Pool(workers, initializer=_warm)

    def submit(self, resources: list[dict], raws: list[bytes | None]):
        """Start validating ``resources`` (``raws[i]``: the JSON bytes of ``resources[i]`` when at hand);
        :meth:`result` of the handle returns their problems in order.

        The tail share :attr:`own_share` stays here, validated by :meth:`result` just before it waits
        for the workers: when the workers are the slower stage this process would otherwise sit idle.
        """
        if self._pool is None or not resources:
            return ("now", resources, None)
        from orjson import dumps

        cut = len(resources) - int(len(resources) * self.own_share)
        payloads = [raw if raw is not None else dumps(resource) for resource, raw in zip(resources[:cut], raws[:cut])]
        # A few chunks per worker: equal shares even when one chunk holds the big resources.
        size = max(1, -(-len(payloads) // (self.workers * 4)))
        chunks = [payloads[i:i + size] for i in range(0, len(payloads), size)]
        return ("pool", resources[cut:], self._pool.map_async(problems_of, chunks) if chunks else None)

    def result(self, handle) -> list[tuple[str, str] | None]:
        kind, own, pending = handle
        mine = [problem(resource) for resource in own]
        if kind == "now" or pending is None:
            return mine
        ready = pending.ready()
        theirs = [p for chunk in pending.get() for p in chunk]
        # Balance the two stages: take more of the next batches while the workers lag, less once
        # they wait for this process.  Which process validates a resource never changes its result.
        self.own_share = max(0.0, min(0.5, self.own_share + (-0.05 if ready else 0.05)))
        return theirs + mine

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
