"""Index DICOM files already on disk: folders, single files, or a DICOMDIR.

Only headers are parsed (``stop_before_pixels``: parsing stops at (7FE0,0010) Pixel Data, PS3.5
Section 7); the rest of each file is read once, unparsed, for its content digest and to check it is
whole (:mod:`node.dicom.instance`).  Data sets without File Meta are read too.  A DICOMDIR (PS3.10 Section 8,
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

from node.dicom.errors import CORRUPT_DICOM, NOT_DICOM, DicomInputError
from node.dicom.instance import read_instance
from node.dicom.mapping import IndexReport, SeriesIndexer
from node.dicom.negotiation import MEDIA_STORAGE_DIRECTORY

#: Quarantined payloads are capped: a 2 GB non-DICOM file stays on disk, its path is in the reason.
MAX_PAYLOAD = 64 * 1024 * 1024
BATCH = 500


def _dicomdir_files(dicomdir: Path) -> list[Path]:
    fileset = FileSet(pydicom.dcmread(dicomdir))
    return [Path(instance.path) for instance in fileset]


def iter_files(paths: Iterable[str | Path], on_dicomdir=None) -> Iterator[Path]:
    """Every candidate file under ``paths``; a DICOMDIR (the file or in a folder) lists its own.

    ``on_dicomdir(path, error)`` is called for each DICOMDIR used (``error`` None) or found broken
    (then the folder is walked instead, so a damaged DICOMDIR loses nothing).
    """
    seen: set[Path] = set()
    on_dicomdir = on_dicomdir or (lambda _path, _error: None)

    def listed(dicomdir: Path, folder: Path | None) -> Iterable[Path]:
        try:
            files = _dicomdir_files(dicomdir)
        except Exception as exc:  # noqa: BLE001 - a damaged DICOMDIR must not stop the load
            on_dicomdir(dicomdir, exc)
            return [] if folder is None else walk(folder)
        on_dicomdir(dicomdir, None)
        return files

    def walk(folder: Path) -> Iterator[Path]:
        return (Path(root) / name for root, _dirs, names in os.walk(folder) for name in sorted(names))

    for raw in paths:
        path = Path(raw)
        if path.is_file():
            candidates: Iterable[Path] = listed(path, None) if path.name.upper() == "DICOMDIR" else [path]
        elif path.is_dir():
            dicomdir = next((path / n for n in ("DICOMDIR", "dicomdir") if (path / n).is_file()), None)
            candidates = listed(dicomdir, path) if dicomdir is not None else walk(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
        for candidate in candidates:
            if candidate in seen or (dicomdir_name(candidate) and candidate.parent == path):
                continue
            seen.add(candidate)
            yield candidate


def dicomdir_name(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


def _payload(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.stat().st_size <= MAX_PAYLOAD else None
    except OSError:
        return None


def index_file(indexer: SeriesIndexer, path: Path) -> bool:
    """Read and queue one file; quarantine it if it is not readable DICOM.  True when queued."""
    indexer.report.files += 1
    try:
        instance = read_instance(path)
    except InvalidDicomError as exc:
        indexer.reject(NOT_DICOM, f"not a DICOM file ({exc})", path, payload=_payload(path))
        return False
    except DicomInputError as exc:
        indexer.reject(exc.reason_code, str(exc), path, payload=_payload(path))
        return False
    except OSError as exc:
        indexer.reject(CORRUPT_DICOM, f"cannot be read ({exc.strerror or exc})", path)
        return False
    ds = instance.dataset
    if (ds.file_meta.get("MediaStorageSOPClassUID") if instance.has_meta else ds.get("SOPClassUID")) \
            == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        indexer.report.dicomdirs += 1  # a media index, whatever its name: its instances are files too
        return False
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        # pydicom reads damaged files leniently; an instance without its SOP Common module
        # (PS3.3 C.12.1) is garbage after a DICM prefix or a file cut short.
        indexer.reject(CORRUPT_DICOM, "damaged or truncated DICOM: no SOP Class/Instance UID", path,
                       payload=_payload(path))
        return False
    return indexer.add(ds, path, instance.digest) is not None


def index_paths(engine: Engine, paths: Iterable[str | Path], source: str = "file", progress=None,
                issuer: str | None = None) -> IndexReport:
    """Index every DICOM file under ``paths`` into ``image_occurrence``; returns the run's counts.

    Every file is accounted for in the report: indexed, a duplicate copy, a DICOMDIR, or
    quarantined with its reason (a damaged DICOMDIR is quarantined and its folder walked instead).
    """
    indexer = SeriesIndexer(engine, source, issuer=issuer)

    def on_dicomdir(path: Path, error: Exception | None) -> None:
        indexer.report.files += 1
        if error is None:
            indexer.report.dicomdirs += 1
        else:
            indexer.reject(CORRUPT_DICOM, f"DICOMDIR cannot be read ({type(error).__name__}: {error}); "
                                          "its folder was walked instead", path, payload=_payload(path))

    for n, path in enumerate(iter_files(paths, on_dicomdir), 1):
        index_file(indexer, path)
        if n % BATCH == 0:
            indexer.flush()
            if progress:
                progress(n)
    indexer.flush()
    return indexer.report
