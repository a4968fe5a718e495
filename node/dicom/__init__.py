"""DICOM ingest: three ways in, one mapping.

* :mod:`node.dicom.index` walks folders (DICOMDIR or not) reading headers only;
* :mod:`node.dicom.scp` is a Storage SCP (PS3.4 Annex B) that stores and indexes as files arrive;
* :mod:`node.dicom.pull` queries and retrieves from a PACS (PS3.4 Annex C, C-FIND + C-MOVE/C-GET).

All three hand each instance's header to :class:`node.dicom.mapping.SeriesIndexer`, which owns the
series -> ``image_occurrence`` mapping.  :mod:`node.dicom.features` turns image series plus their
segmentations and parametric maps into ``image_feature`` rows, as a separate step.
"""
