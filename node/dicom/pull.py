"""Pull studies from a PACS: C-FIND, then C-MOVE or C-GET (PS3.4 Annex C, Query/Retrieve).

The query is Study Root at STUDY level (PS3.4 C.6.2) with PatientID and a StudyDate range
``YYYYMMDD-`` (PS3.4 C.2.2.2.5) as keys.  Each study found is then retrieved:

* C-MOVE (PS3.4 C.4.2): the PACS opens its own association to our Storage SCP, which therefore
  must be known to the PACS under ``--aet`` (its move destination table); we listen on
  ``move_port`` for the duration of the pull;
* C-GET (PS3.4 C.4.3): the instances come back over our own association as C-STORE
  sub-operations (we take the SCP role for the storage SOP classes, PS3.7 D.3.3.4), so the PACS
  needs no configuration and no port is opened.

Either way each instance goes through :class:`node.dicom.scp.InstanceStore`: stored under the data
directory and indexed with ``image_source`` ``pull``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import Engine

from node.dicom.network import NODELAY_HANDLERS
from node.dicom.scp import InstanceStore

PENDING = (0xFF00, 0xFF01)


class PullError(RuntimeError):
    """The PACS cannot be reached, refuses the association, or fails a query."""


@dataclass
class PullReport:
    studies: list[str] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warnings: int = 0
    index: object = None

    def summary(self) -> str:
        return (f"{len(self.studies)} studies found; {self.completed} instances retrieved, {self.failed} failed"
                + (f"; {self.index.summary()}" if self.index is not None else ""))


def study_query(patient: str | None = None, since: dt.date | None = None) -> Dataset:
    """The C-FIND identifier: return StudyInstanceUID of the matching studies."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient or ""
    ds.StudyDate = f"{since:%Y%m%d}-" if since else ""
    ds.StudyInstanceUID = ""
    return ds


def _parse_pacs(pacs: str) -> tuple[str, int]:
    host, _, port = pacs.rpartition(":")
    if not host or not port.isdigit():
        raise PullError(f"--pacs must be HOST:PORT, not {pacs!r}")
    return host, int(port)


class PacsPull:
    """One pull run against one PACS."""

    def __init__(self, engine: Engine, data_dir: str | Path, pacs: str, aet: str, called_aet: str,
                 mode: str = "move", move_port: int = 0, listen_host: str = "127.0.0.1",
                 issuer: str | None = None):
        if mode not in ("move", "get"):
            raise PullError(f"retrieve mode must be 'move' or 'get', not {mode!r}")
        self.host, self.port = _parse_pacs(pacs)
        self.aet, self.called_aet, self.mode = aet, called_aet, mode
        self.move_port, self.listen_host = move_port, listen_host
        self.store = InstanceStore(engine, data_dir, "pull", issuer)
        self.ae = AE(ae_title=aet)
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        if mode == "move":
            self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            for context in StoragePresentationContexts:
                self.ae.add_supported_context(context.abstract_syntax, context.transfer_syntax)
        else:
            self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            # 128 presentation contexts at most per association (PS3.8 9.3.2.2): Find + Get + 120 storage.
            for context in StoragePresentationContexts[:120]:
                self.ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
        self.report = PullReport(index=self.store.report)

    def _associate(self, handlers):
        assoc = self.ae.associate(self.host, self.port, ae_title=self.called_aet,
                                  ext_neg=self._roles() if self.mode == "get" else None,
                                  evt_handlers=[*NODELAY_HANDLERS, *handlers])
        if not assoc.is_established:
            raise PullError(f"PACS {self.host}:{self.port} ({self.called_aet}) refused or did not answer "
                            f"the association from {self.aet}")
        return assoc

    def _roles(self):
        return [build_role(c.abstract_syntax, scp_role=True) for c in StoragePresentationContexts[:120]]

    def find(self, patient: str | None = None, since: dt.date | None = None) -> list[str]:
        assoc = self._associate([])
        try:
            studies = []
            for status, identifier in assoc.send_c_find(study_query(patient, since),
                                                        StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise PullError("the PACS dropped the association during C-FIND")
                if status.Status in PENDING and identifier is not None:
                    studies.append(str(identifier.StudyInstanceUID))
                elif status.Status not in PENDING and status.Status != 0x0000:
                    raise PullError(f"C-FIND failed with status 0x{status.Status:04X}")
            return studies
        finally:
            assoc.release()

    def _retrieve(self, assoc, study_uid: str) -> None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        if self.mode == "move":
            responses = assoc.send_c_move(identifier, self.aet, StudyRootQueryRetrieveInformationModelMove)
        else:
            responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        final = None
        for status, _identifier in responses:
            if not status:
                raise PullError(f"the PACS dropped the association retrieving study {study_uid}")
            if status.Status not in PENDING:
                final = status
        if final is not None:
            self.report.completed += int(final.get("NumberOfCompletedSuboperations", 0) or 0)
            self.report.failed += int(final.get("NumberOfFailedSuboperations", 0) or 0)
            self.report.warnings += int(final.get("NumberOfWarningSuboperations", 0) or 0)

    def run(self, patient: str | None = None, since: dt.date | None = None) -> PullReport:
        self.report.studies = self.find(patient, since)
        if not self.report.studies:
            return self.report
        server = None
        if self.mode == "move":
            server = self.ae.start_server((self.listen_host, self.move_port), block=False,
                                          evt_handlers=[*NODELAY_HANDLERS, *self.store.handlers])
        try:
            assoc = self._associate(self.store.handlers if self.mode == "get" else [])
            try:
                for study_uid in self.report.studies:
                    self._retrieve(assoc, study_uid)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            if server is not None:
                server.shutdown()
            self.store.flush()
        return self.report


def pull(engine: Engine, data_dir: str | Path, pacs: str, aet: str, called_aet: str, *,
         patient: str | None = None, since: dt.date | None = None, mode: str = "move",
         move_port: int = 0, issuer: str | None = None) -> PullReport:
    """Query ``pacs`` for studies (of ``patient``, since ``since``) and retrieve them into the node."""
    return PacsPull(engine, data_dir, pacs, aet, called_aet, mode, move_port, issuer=issuer).run(patient, since)
