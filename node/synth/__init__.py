"""Synthetic multi-site radiogenomic cohorts with planted, known signals (issue 5).

``radfed-node synth --sites N --patients P --seed S OUT/`` (:mod:`node.synth.cli`) writes per site
a FHIR R4 Bulk Data export, DICOM Part 10 files and the site's vocabulary mapping, exactly as a
hospital hands them over, plus ``OUT/ground_truth.json``.  Modules: :mod:`.sites` (how sites
differ), :mod:`.cohorts` (one function per planted cohort), :mod:`.resources` (FHIR builders in
:mod:`node.fhir_profile`), :mod:`.fhir_writer` (streaming NDJSON), :mod:`.dicom_writer`,
:mod:`.ground_truth`, :mod:`.geometry` (voxel grid and habitat shells shared by FHIR and DICOM),
:mod:`.context` (one patient's ids, random stream and output), :mod:`.rare` (rare-disease catalogue),
:mod:`.codes`, :mod:`.ids`, :mod:`.generator` (orchestration).  See ``README.md`` here.
"""

from node.synth.generator import SynthOptions, generate

__all__ = ["SynthOptions", "generate"]
