"""Pull studies from a PACS: C-FIND, then C-MOVE or C-GET per series, with honest accounting.

Query/Retrieve, Study Root information model (PS3.4 Annex C, C.6.2):

1. STUDY level: the studies of ``PatientID`` with a StudyDate range ``YYYYMMDD-`` (PS3.4 C.2.2.2.5),
   with NumberOfStudyRelatedInstances (PS3.4 C.3.4, an optional return key the archive counts);
2. SERIES level, per study: each series with NumberOfSeriesRelatedInstances.  A series the node
   already holds that many instances of is skipped (an incremental pull), unless ``force``;
3. IMAGE level, per series to fetch: the SOP Instance UIDs and SOP Classes the archive holds, so
   the node knows exactly which instances must arrive, and which storage classes to accept.

Each series is then retrieved on its own:

* C-MOVE (PS3.4 C.4.2): the PACS opens its own association to our Storage SCP, which therefore
  must be known to the PACS under ``aet`` (its move destination table); we listen on
  ``move_port`` for the duration of the pull, accepting every storage class and transfer syntax
  (:mod:`node.dicom.negotiation`) plus any private class the IMAGE query reported;
* C-GET (PS3.4 C.4.3): the instances come back over our own association as C-STORE
  sub-operations; we propose, for the classes the series holds, one context per transfer syntax
  and take the SCP role for them (PS3.7 D.3.3.4), so the archive sends each instance as stored.

Every final C-MOVE/C-GET response is checked (PS3.4 C.4.2.1.5: Success, Warning B000 = some
sub-operations failed, Failure A7xx/A9xx/Cxxx, Cancel FE00), and so is what arrived: a series whose
instances did not all arrive is retried (``retries`` more times, asking only for the missing
instances at IMAGE level), and the report gives expected / received / failed per study.  An
archive that cannot send an instance in any syntax offered — or loses it — thus shows up as
missing, never as success.  Either way each instance goes through
:class:`node.dicom.scp.InstanceStore`: stored under the data directory and indexed with
``image_source`` ``pull``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)
from sqlalchemy import Engine, select

from cdm.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, RadfedError
from cdm.ids import stable_id
from cdm.schema import tables
from node.dicom.negotiation import STORAGE_SOP_CLASSES, add_storage_contexts, get_contexts
from node.dicom.network import NODELAY_HANDLERS
from node.dicom.scp import InstanceStore

PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
MOVE_DESTINATION_UNKNOWN = 0xA801
#: UIDs per IMAGE-level retrieve of missing instances (list matching, PS3.4 C.2.2.2.2).
UIDS_PER_RETRIEVE = 100
SOURCE_RECORD = tables["source_record"]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The usual storage class of a modality, for C-GET when an archive does not report SOPClassUID.
MODALITY_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20", "US": "1.2.840.10008.5.1.4.1.1.6.1", "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MG": "1.2.840.10008.5.1.4.1.1.1.2", "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4", "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",
    "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2", "RTPLAN": "1.2.840.10008.5.1.4.1.1.481.5",
    "SR": "1.2.840.10008.5.1.4.1.1.88.33",
}


class PullError(RadfedError):
    """The PACS cannot be reached, refuses the association, or fails a query: nothing can be pulled."""

    exit_code = EXIT_FAILED


def _status_text(code: int) -> str:
    known = QR_MOVE_SERVICE_CLASS_STATUS.get(code) or QR_GET_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    category, text = known if known else (code_to_category(code), "")
    return f"0x{code:04X} ({category}{': ' + text if text else ''})"


@dataclass
class SeriesPull:
    """One series at the PACS and what became of it."""

    study_uid: str
    series_uid: str
    modality: str = ""
    reported: int | None = None  # NumberOfSeriesRelatedInstances, when the PACS gives it
    instances: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> SOP Class, IMAGE level
    here_before: set[str] = field(default_factory=set)  # SOPInstanceUIDs indexed at the node before
    received: set[str] = field(default_factory=set)  # SOPInstanceUIDs that arrived this run
    skipped: bool = False  # already complete at the node
    attempts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return max(len(self.instances), self.reported or 0)

    @property
    def present(self) -> int:
        """Expected instances now at the node (arrived this run, or indexed before)."""
        if self.skipped:
            return self.expected
        if self.instances:
            return len(set(self.instances) & (self.received | self.here_before))
        return len(self.received | self.here_before)

    @property
    def missing(self) -> set[str]:
        return set(self.instances) - self.received - self.here_before

    @property
    def failed(self) -> int:
        return max(self.expected - self.present, 0)


@dataclass
class StudyPull:
    study_uid: str
    patient_id: str = ""
    date: str = ""
    reported: int | None = None  # NumberOfStudyRelatedInstances
    series: list[SeriesPull] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return max(sum(s.expected for s in self.series), self.reported or 0)

    @property
    def received(self) -> int:
        return sum(len(s.received & set(s.instances)) if s.instances else len(s.received) for s in self.series)

    @property
    def already(self) -> int:
        return sum(s.expected if s.skipped else len(s.here_before & set(s.instances)) for s in self.series)

    @property
    def failed(self) -> int:
        return max(self.expected - sum(s.present for s in self.series), 0)

    def line(self) -> str:
        text = (f"study {self.study_uid} (PatientID {self.patient_id or '?'}, {self.date or 'no date'}): "
                f"expected {self.expected}, received {self.received}, failed {self.failed}"
                + (f", {self.already} already here" if self.already else ""))
        notes = list(self.problems)
        for series in self.series:
            if series.failed:
                notes.append(f"series {series.series_uid} ({series.modality or '?'}): {series.failed} of "
                             f"{series.expected} missing after {series.attempts} attempt(s)"
                             + (f"; {'; '.join(series.problems)}" if series.problems else ""))
            elif series.problems:
                notes.append(f"series {series.series_uid}: complete, but {'; '.join(series.problems)}")
        return text + "".join(f"\n    {note}" for note in notes)


@dataclass
class PullReport:
    """Per study: expected (what the PACS said it holds), received, failed (= not at the node)."""

    studies: list[StudyPull] = field(default_factory=list)
    index: object = None

    @property
    def study_uids(self) -> list[str]:
        return [s.study_uid for s in self.studies]

    @property
    def expected(self) -> int:
        return sum(s.expected for s in self.studies)

    @property
    def received(self) -> int:
        return sum(s.received for s in self.studies)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.studies)

    @property
    def skipped_series(self) -> int:
        return sum(1 for study in self.studies for s in study.series if s.skipped)

    @property
    def exit_code(self) -> int:
        """``EXIT_PARTIAL`` when anything is missing or was quarantined, else ``EXIT_OK``."""
        quarantined = bool(self.index is not None and self.index.quarantined)
        return EXIT_PARTIAL if self.failed or quarantined or any(s.problems for s in self.studies) else EXIT_OK

    def summary(self) -> str:
        incomplete = sum(1 for s in self.studies if s.failed or s.problems)
        lines = [f"{len(self.studies)} studies found: {len(self.studies) - incomplete} complete, {incomplete} "
                 f"incomplete; {self.expected} instances expected, {self.received} received, {self.failed} failed"
                 + (f"; {self.skipped_series} series already complete here, skipped" if self.skipped_series else "")]
        lines += [f"  {study.line()}" for study in self.studies]
        if self.index is not None:
            lines.append(f"index: {self.index.summary()}")
        return "\n".join(lines)


def study_query(patient: str | None = None, since: dt.date | None = None) -> Dataset:
    """The STUDY-level C-FIND identifier: the matching studies and how many instances each holds."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient or ""
    ds.StudyDate = f"{since:%Y%m%d}-" if since else ""
    ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedInstances = None
    return ds


def _series_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.NumberOfSeriesRelatedInstances = None
    return ds


def _image_query(study_uid: str, series_uid: str, with_class: bool = True) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ""
    if with_class:
        ds.SOPClassUID = ""
    return ds


def _count(identifier: Dataset, keyword: str) -> int | None:
    value = identifier.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _parse_pacs(pacs: str) -> tuple[str, int]:
    host, _, port = pacs.rpartition(":")
    if not host or not port.isdigit():
        raise PullError(f"--pacs must be HOST:PORT, not {pacs!r}")
    return host, int(port)


class PacsPull:
    """One pull run against one PACS."""

    def __init__(self, engine: Engine, data_dir: str | Path, pacs: str, aet: str, called_aet: str,
                 mode: str = "move", move_port: int = 0, listen_host: str = "127.0.0.1",
                 issuer: str | None = None, force: bool = False, retries: int = 2):
        if mode not in ("move", "get"):
            raise PullError(f"retrieve mode must be 'move' or 'get', not {mode!r}")
        self.host, self.port = _parse_pacs(pacs)
        self.aet, self.called_aet, self.mode = aet, called_aet, mode
        self.move_port, self.listen_host = move_port, listen_host
        self.force, self.retries = force, retries
        self.engine = engine
        self.store = InstanceStore(engine, data_dir, "pull", issuer)
        self.ae = AE(ae_title=aet)
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 120
        self.report = PullReport(index=self.store.report)

    # -- associations ------------------------------------------------------------------------------

    def _associate(self, contexts, handlers=(), roles=None):
        assoc = self.ae.associate(self.host, self.port, contexts=contexts, ae_title=self.called_aet,
                                  ext_neg=roles, evt_handlers=[*NODELAY_HANDLERS, *handlers])
        if not assoc.is_established:
            raise PullError(f"PACS {self.host}:{self.port} ({self.called_aet}) refused or did not answer "
                            f"the association from {self.aet}")
        return assoc

    def _find(self, assoc, identifier: Dataset) -> list[Dataset]:
        found = []
        for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PullError("the PACS dropped the association during C-FIND")
            if status.Status in PENDING and answer is not None:
                found.append(answer)
            elif status.Status not in PENDING and status.Status != SUCCESS:
                raise PullError(f"C-FIND at {identifier.QueryRetrieveLevel} level failed with status "
                                f"{_status_text(status.Status)}")
        return found

    # -- the run -----------------------------------------------------------------------------------

    def plan(self, patient: str | None = None, since: dt.date | None = None) -> None:
        """C-FIND down to the instances of every series the node does not hold complete yet."""
        assoc = self._associate([build_context(StudyRootQueryRetrieveInformationModelFind)])
        try:
            for answer in self._find(assoc, study_query(patient, since)):
                study = StudyPull(str(answer.StudyInstanceUID), str(answer.get("PatientID", "") or ""),
                                  str(answer.get("StudyDate", "") or ""),
                                  _count(answer, "NumberOfStudyRelatedInstances"))
                self.report.studies.append(study)
                for row in self._find(assoc, _series_query(study.study_uid)):
                    series = SeriesPull(study.study_uid, str(row.SeriesInstanceUID), str(row.get("Modality", "") or ""),
                                        _count(row, "NumberOfSeriesRelatedInstances"))
                    study.series.append(series)
                    series.here_before = self._here(series.series_uid)
                    if (not self.force and series.reported is not None and series.here_before
                            and len(series.here_before) >= series.reported):
                        series.skipped = True
                        continue
                    series.instances = self._instances(assoc, series)
                    if self.force:
                        series.here_before = set()
        finally:
            assoc.release()

    def _instances(self, assoc, series: SeriesPull) -> dict[str, str]:
        """SOP Instance UID -> SOP Class UID of a series, from an IMAGE-level C-FIND.

        Some archives fail the query when they must open a damaged file to answer SOPClassUID: the
        UIDs alone are asked for then, and the classes guessed from the modality (for C-GET)."""
        for with_class in (True, False):
            try:
                answers = self._find(assoc, _image_query(series.study_uid, series.series_uid, with_class))
            except PullError as exc:
                series.problems.append(f"{exc}")
                if not assoc.is_established:
                    raise
                continue
            guess = MODALITY_CLASSES.get(series.modality.upper(), SECONDARY_CAPTURE)
            return {str(a.SOPInstanceUID): str(a.get("SOPClassUID", "") or "") or guess
                    for a in answers if a.get("SOPInstanceUID")}
        return {}

    def _here(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs of the series already indexed at the node."""
        with self.engine.connect() as conn:
            keys = conn.execute(select(SOURCE_RECORD.c.source_key).where(
                SOURCE_RECORD.c.cdm_table == "image_occurrence",
                SOURCE_RECORD.c.cdm_id == stable_id("dicom-series", series_uid),
                SOURCE_RECORD.c.source_key.startswith("dicom|"))).scalars()
            return {key.split("|", 1)[1] for key in keys}

    def run(self, patient: str | None = None, since: dt.date | None = None) -> PullReport:
        self.plan(patient, since)
        todo = [s for study in self.report.studies for s in study.series if not s.skipped]
        if not todo:
            return self.report
        server = None
        if self.mode == "move":
            private = {c for s in todo for c in s.instances.values() if c and c not in STORAGE_SOP_CLASSES}
            destination = AE(ae_title=self.aet)
            destination.network_timeout = 60
            destination.maximum_associations = 4
            add_storage_contexts(destination, [*STORAGE_SOP_CLASSES, *sorted(private)])
            server = destination.start_server((self.listen_host, self.move_port), block=False,
                                              evt_handlers=[*NODELAY_HANDLERS, *self.store.handlers])
        try:
            session = _Session(self)
            try:
                for series in todo:
                    self._pull_series(session, series)
            finally:
                session.close()
        finally:
            if server is not None:
                server.shutdown()
            self.store.flush()
        for study in self.report.studies:
            reported_series = sum(s.reported or 0 for s in study.series)
            if study.reported is not None and reported_series and study.reported > reported_series:
                study.problems.append(f"the PACS counts {study.reported} instances in the study but "
                                      f"{reported_series} in its series")
        return self.report

    def _pull_series(self, session: "_Session", series: SeriesPull) -> None:
        """Retrieve one series, then its missing instances again, up to ``retries`` more times."""
        for attempt in range(1 + self.retries):
            missing = series.missing
            if attempt and series.instances and not missing:
                break
            if attempt and not series.instances and len(series.received | series.here_before) >= series.expected:
                break
            if attempt:
                time.sleep(min(0.5 * attempt, 2.0))
            series.attempts += 1
            self.store.arrived.clear()
            if attempt == 0 or not series.instances:
                requests = [None]  # the whole series
            else:
                ordered = sorted(missing)
                requests = [ordered[i:i + UIDS_PER_RETRIEVE] for i in range(0, len(ordered), UIDS_PER_RETRIEVE)]
            for uids in requests:
                problem = session.retrieve(series, uids)
                if problem and problem not in series.problems[-1:]:
                    series.problems.append(problem)
            self.store.flush()
            series.received |= self.store.arrived
        if not series.missing and series.instances:
            # What was missing after one attempt arrived after another: keep the note short.
            series.problems = [p for p in series.problems if "dropped" in p]


class _Session:
    """The retrieve associations of one pull: one C-MOVE association for every series, re-opened if
    the PACS drops it; for C-GET one per set of storage classes (a C-GET requestor must propose the
    classes it takes back, and at most 128 contexts fit in one association)."""

    def __init__(self, pull: PacsPull):
        self.pull = pull
        self.assoc = None
        self.classes: tuple[str, ...] = ()

    def _open(self, classes: tuple[str, ...], contexts=None):
        if self.assoc is not None and self.assoc.is_established and classes == self.classes:
            return self.assoc
        self.close()
        pull = self.pull
        if pull.mode == "move":
            self.assoc = pull._associate([build_context(StudyRootQueryRetrieveInformationModelMove)])
        else:
            roles = [build_role(uid, scp_role=True) for uid in classes]
            self.assoc = pull._associate([build_context(StudyRootQueryRetrieveInformationModelGet), *contexts],
                                         pull.store.handlers, roles)
        self.classes = classes
        return self.assoc

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def retrieve(self, series: SeriesPull, uids: list[str] | None) -> str | None:
        """One C-MOVE/C-GET of the series (``uids`` None) or of some of its instances; returns a
        problem to report, or None when the final status is Success."""
        pull = self.pull
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES" if uids is None else "IMAGE"
        identifier.StudyInstanceUID = series.study_uid
        identifier.SeriesInstanceUID = series.series_uid
        if uids is not None:
            identifier.SOPInstanceUID = uids
        if pull.mode == "move":
            groups = [((), None)]
        else:
            wanted = uids if uids is not None else list(series.instances)
            classes = sorted({series.instances[u] for u in wanted if series.instances.get(u)}) or [
                MODALITY_CLASSES.get(series.modality.upper(), SECONDARY_CAPTURE)]
            groups = [(tuple(sorted({c.abstract_syntax for c in group})), group) for group in get_contexts(classes)]
        problems = []
        for classes, contexts in groups:
            if len(groups) > 1:  # classes split over associations: ask each for its classes' instances
                identifier.QueryRetrieveLevel = "IMAGE"
                identifier.SOPInstanceUID = [u for u in (uids or series.instances) if series.instances.get(u) in classes]
            problem = self._send(identifier, classes, contexts)
            if problem:
                problems.append(problem)
        return "; ".join(problems) or None

    def _send(self, identifier: Dataset, classes, contexts) -> str | None:
        pull = self.pull
        try:
            assoc = self._open(classes, contexts)
        except PullError as exc:
            return str(exc)
        if pull.mode == "move":
            responses = assoc.send_c_move(identifier, pull.aet, StudyRootQueryRetrieveInformationModelMove)
        else:
            responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        final = None
        for status, _identifier in responses:
            if not status:
                self.close()
                return f"the PACS dropped the association during C-{pull.mode.upper()}"
            if status.Status not in PENDING:
                final = status
        if final is None:
            return f"no final C-{pull.mode.upper()} response"
        code = int(final.Status)
        if code == MOVE_DESTINATION_UNKNOWN:
            raise PullError(f"the PACS does not know move destination {pull.aet!r}: register it there with this "
                            f"host and port {pull.move_port}, or use --mode get")
        if code == SUCCESS:
            return None
        counts = ", ".join(f"{int(final.get(k, 0) or 0)} {label}" for k, label in (
            ("NumberOfCompletedSuboperations", "completed"), ("NumberOfFailedSuboperations", "failed"),
            ("NumberOfWarningSuboperations", "warning")))
        comment = str(final.get("ErrorComment", "") or "")
        return (f"PACS final C-{pull.mode.upper()} status {_status_text(code)}, sub-operations {counts}"
                + (f", {comment!r}" if comment else ""))


def pull(engine: Engine, data_dir: str | Path, pacs: str, aet: str, called_aet: str, *,
         patient: str | None = None, since: dt.date | None = None, mode: str = "move",
         move_port: int = 0, issuer: str | None = None, force: bool = False, retries: int = 2) -> PullReport:
    """Query ``pacs`` for studies (of ``patient``, since ``since``) and retrieve them into the node."""
    return PacsPull(engine, data_dir, pacs, aet, called_aet, mode, move_port, issuer=issuer, force=force,
                    retries=retries).run(patient, since)
