"""FHIR R4 ingest: Bundles and Bulk Data NDJSON into the CDM, idempotent, with quarantine.

``radfed-node ingest fhir PATH...`` runs :func:`node.ingest.engine.ingest_paths`.  The pieces, each
one concern: :mod:`.reader` (files -> resources in dependency order, streamed), :mod:`.validate`
(fhir.resources R4B), :mod:`.context` (the mappers' view of the run), :mod:`.load` (batched,
idempotent writes with ``source_record``), :mod:`.periods` (observation periods), :mod:`.summary`,
and the mappers: :mod:`.contract` is their interface, :mod:`.mappers` their one table and one module
per resource (``mappers/observation.py`` is where an Observation becomes a measurement row), and
:mod:`.mappers.values` the one way every mapper reads dates, codes and references.
``radfed-node mapping-report`` is :mod:`.mapping_report`.
"""
