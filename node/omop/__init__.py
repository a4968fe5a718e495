"""The ways in for a site that already runs OMOP: ``radfed-node attach`` (serve an existing CDM in
place, :mod:`cdm.attach`) and ``radfed-node ingest omop`` (load an OMOP CSV export, :mod:`.export`)."""
