"""Index DICOM files already on disk: folders, single files, or a DICOMDIR.

Only headers are read (``stop_before_pixels``: parsing stops at (7FE0,0010) Pixel Data, PS3.5
Section 7), so indexing costs about what reading the headers costs.  A DICOMDIR (PS3.10 Section 8,
Basic Directory IOD PS3.3 F.3) names its instances; a folder without one is walked.  Files that are
not DICOM, or whose header cannot be parsed, are quarantined with their bytes, and the walk goes on.
Series are written in batches, each batch its own transaction, so an interrupted run keeps what it
wrote and a re-run is idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from sqlalchemy import Engine

from node.dicom.mapping import CORRUPT_DICOM, NOT_DICOM, IndexReport, SeriesIndexer

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Quarantined payloads are capped: a 2 GB non-DICOM file stays on disk, its path is in the reason.
MAX_PAYLOAD = 64 * 1024 * 1024
BATCH = 500


def _dicomdir_files(dicomdir: Path) -> list[Path]:
    fileset = FileSet(pydicom.dcmread(dicomdir))
    return [Path(instance.path) for instance in fileset]


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Every candidate file under ``paths``; a DICOMDIR (the file or in a folder) lists its own."""
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            candidates: Iterable[Path] = _dicomdir_files(path) if path.name.upper() == "DICOMDIR" else [path]
        elif path.is_dir():
            dicomdir = next((path / n for n in ("DICOMDIR", "dicomdir") if (path / n).is_file()), None)
            if dicomdir is not None:
                candidates = _dicomdir_files(dicomdir)
            else:
                candidates = (Path(root) / name for root, _dirs, names in os.walk(path) for name in sorted(names))
        else:
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
        for candidate in candidates:
            if candidate.name.upper() == "DICOMDIR" or candidate in seen:
                continue
            seen.add(candidate)
            yield candidate


def read_header(path: Path):
    """The header of ``path``; raises :class:`InvalidDicomError` or another parse error if unreadable."""
    return pydicom.dcmread(path, stop_before_pixels=True)


def _payload(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.stat().st_size <= MAX_PAYLOAD else None
    except OSError:
        return None


def index_file(indexer: SeriesIndexer, path: Path) -> bool:
    """Read and queue one file; quarantine it if it is not readable DICOM.  True when queued."""
    indexer.report.files += 1
    try:
        ds = read_header(path)
    except InvalidDicomError as exc:
        indexer.reject(NOT_DICOM, f"not a DICOM file ({exc})", path, payload=_payload(path))
        return False
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        indexer.reject(CORRUPT_DICOM, f"unreadable DICOM header ({type(exc).__name__}: {exc})", path,
                       payload=_payload(path))
        return False
    if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        return False
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        # pydicom reads damaged files leniently; an instance without its SOP Common module
        # (PS3.3 C.12.1) is garbage after a DICM prefix or a file cut short.
        indexer.reject(CORRUPT_DICOM, "damaged or truncated DICOM: no SOP Class/Instance UID", path,
                       payload=_payload(path))
        return False
    return indexer.add(ds, path) is not None


def index_paths(engine: Engine, paths: Iterable[str | Path], source: str = "file", progress=None,
                issuer: str | None = None) -> IndexReport:
    """Index every DICOM file under ``paths`` into ``image_occurrence``; returns the run's counts."""
    indexer = SeriesIndexer(engine, source, issuer=issuer)
    for n, path in enumerate(iter_files(paths), 1):
        index_file(indexer, path)
        if n % BATCH == 0:
            indexer.flush()
            if progress:
                progress(n)
    indexer.flush()
    return indexer.report
