"""The node's Storage SCP: PACS and modalities send here, files are kept and indexed as they arrive.

Implements the Verification (C-ECHO, PS3.4 Annex A) and Storage (C-STORE, PS3.4 Annex B) SOP
classes as SCP, for every storage SOP class of the standard, retired ones included, in every
transfer syntax, compressed ones included (:mod:`node.dicom.negotiation`), plus the private classes
a site lists in ``[dicom] private_sop_classes``.  Each instance is written byte for byte (the
received encoding, with a PS3.10 File Meta Information header) to
``<data_dir>/dicom/<PatientID>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` via a temporary name
and an atomic rename, so no half-written file is ever indexed, then queued for indexing.  The queue
is flushed every :data:`FLUSH_EVERY` instances and when the connection closes — released, aborted or
dropped — so an association that fails mid-transfer keeps every instance it completed.

:class:`InstanceStore` is the C-STORE handler on its own so a C-GET requestor (:mod:`node.dicom.pull`)
stores the sub-operations it receives exactly the same way.  Whoever needs to react to new series
(feature extraction, :class:`node.dicom.features.FeatureWorker`) appends a handler to
:attr:`InstanceStore.indexed_handlers` rather than the SCP growing flags.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import Engine

from node.dicom.errors import CORRUPT_DICOM
from node.dicom.instance import read_bytes_instance, read_instance
from node.dicom.mapping import IndexReport, SeriesIndexer
from node.dicom.negotiation import STORAGE_SOP_CLASSES, add_storage_contexts
from node.dicom.network import NODELAY_HANDLERS

FLUSH_EVERY = 200
#: PS3.7 C.4.2.1.4 / Annex B.2.3 status codes.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(part: str) -> str:
    """A path component from a DICOM value (PatientID may hold '/', spaces, '..')."""
    cleaned = _UNSAFE.sub("_", part.strip())[:64].strip(".")
    return cleaned or "_"


class InstanceStore:
    """Stores received instances under ``data_dir`` and indexes them into the CDM.

    Thread-safe: pynetdicom runs each association in its own thread; one lock serialises the CDM
    writes (SQLite has one writer anyway) while files are written concurrently.
    """

    def __init__(self, engine: Engine, data_dir: str | Path, source: str = "scp", issuer: str | None = None):
        self.root = Path(data_dir) / "dicom"  # created with the first instance stored
        self.duplicates = Path(data_dir) / "dicom-duplicates"
        #: SOP Instance UIDs received (whatever became of them), for a pull's accounting.
        self.arrived: set[str] = set()
        self.report = IndexReport()
        self.indexer = SeriesIndexer(engine, source, self.report, issuer)
        self._lock = threading.Lock()
        self._queued = 0
        self.stored = 0
        #: Called with the :class:`~node.dicom.mapping.SeriesHeader` list of each flush that wrote
        #: series (e.g. :class:`node.dicom.features.FeatureWorker` queues new segmentations).
        self.indexed_handlers: list = []

    def path_for(self, ds) -> Path:
        return (self.root / _safe(str(ds.get("PatientID", "") or "_unknown"))
                / _safe(str(ds.get("StudyInstanceUID", "") or "_"))
                / _safe(str(ds.get("SeriesInstanceUID", "") or "_"))
                / f"{_safe(str(ds.get('SOPInstanceUID', '') or 'instance'))}.dcm")

    def handle_store(self, event: evt.Event) -> int:
        """``EVT_C_STORE`` handler: returns the C-STORE response status."""
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # noqa: BLE001 - a peer can send anything
            return CANNOT_UNDERSTAND
        try:
            instance = read_bytes_instance(data, f"c-store:{event.request.AffectedSOPInstanceUID}")
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self.report.files += 1
                self.indexer.reject(CORRUPT_DICOM, f"received dataset cannot be parsed ({exc})",
                                    f"c-store:{event.request.AffectedSOPInstanceUID}",
                                    sop_class=event.request.AffectedSOPClassUID,
                                    resource_id=event.request.AffectedSOPInstanceUID, payload=data)
            return CANNOT_UNDERSTAND
        header = instance.dataset
        try:
            path = self._write(self.path_for(header), data, instance.digest)
        except OSError:
            return OUT_OF_RESOURCES
        with self._lock:
            self.stored += 1
            self.arrived.add(str(header.get("SOPInstanceUID", "")))
            self.report.files += 1
            self.indexer.add(header, path, instance.digest)
            self._queued += 1
            if self._queued >= FLUSH_EVERY:
                self._flush_locked()
        return SUCCESS

    def _write(self, path: Path, data: bytes, digest: str) -> Path:
        """Write ``data`` at ``path`` atomically, unless a copy is there already.

        The same content is not written twice.  Different content under the same SOP Instance UID
        never replaces the file there (the indexer decides whether it is the same instance in
        another encoding, or a conflicting copy to quarantine): it is kept beside the tree, under
        ``<data_dir>/dicom-duplicates/``, where feature extraction does not look.  A copy on disk
        that is cut short (an earlier crash) is replaced by the whole one.
        """
        if path.exists():
            try:
                present = read_instance(path).digest
            except Exception:  # noqa: BLE001 - a damaged copy on disk: the intact one replaces it
                present = None
            if present == digest:
                return path
            if present is not None:
                path = self.duplicates / f"{path.stem}.{digest[:16]}.dcm"
                if path.exists():
                    return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{threading.get_ident()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
        return path

    def handle_close(self, _event: evt.Event | None = None) -> None:
        """``EVT_CONN_CLOSE`` handler: index what the association delivered, however it ended."""
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        written = self.indexer.flush()
        self._queued = 0
        for handler in self.indexed_handlers if written else ():
            handler(written)

    @property
    def handlers(self) -> list:
        return [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_CONN_CLOSE, self.handle_close)]


class StorageSCP:
    """A Storage SCP listening on ``host:port`` as ``ae_title``.

    :meth:`start` returns at once (the server runs in background threads); :meth:`serve_forever`
    blocks until interrupted.  ``port=0`` picks a free port, readable from :attr:`port` afterwards.
    """

    def __init__(self, engine: Engine, data_dir: str | Path, ae_title: str = "RADFED",
                 host: str = "127.0.0.1", port: int = 11112, issuer: str | None = None,
                 extra_sop_classes: tuple[str, ...] = ()):
        self.store = InstanceStore(engine, data_dir, "scp", issuer)
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = 16
        self.ae.network_timeout = 60
        self.ae.add_supported_context(Verification)
        add_storage_contexts(self.ae, [*STORAGE_SOP_CLASSES, *extra_sop_classes])
        self.host, self.port = host, port
        self.server = None

    def start(self) -> int:
        self.server = self.ae.start_server((self.host, self.port), block=False,
                                           evt_handlers=[*NODELAY_HANDLERS, *self.store.handlers])
        self.port = self.server.server_address[1]
        return self.port

    def serve_forever(self) -> None:
        self.start()
        try:
            threading.Event().wait()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.store.flush()
