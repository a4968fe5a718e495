"""One DICOM file: its header, whether it is whole, what it holds, and its pixels.

* :func:`read_instance` reads the header (PS3.10 File Meta + data set up to Pixel Data), also of a
  data set stored without File Meta (PS3.10 7.1 makes the meta mandatory on media, yet exports and
  RT planning systems write bare data sets: they are read when they carry a SOP Common module),
  checks that no element is cut short (a copy interrupted mid-transfer ends inside a value, PS3.5
  7.1: each value has its declared length) and computes the **content digest**: SHA-256 of the data
  set bytes after the File Meta, so two copies of one instance received through different routes
  (different Source AE, implementation) have the same digest, and any edited byte changes it.
* :func:`compare_instances` decides whether two files with one SOP Instance UID hold the same
  instance when their digests differ: the same attributes and the same decoded pixels (a lossless
  re-encoding, e.g. a PACS storing JPEG 2000 what a modality sent uncompressed, keeps the UID:
  PS3.5 8.2.1), or not.
* :func:`pixel_array` decodes pixel data through pydicom's decoder plugins (pylibjpeg with its
  libjpeg, openjpeg and RLE plugins, pyjpegls; GDCM when installed) and raises
  :class:`~node.dicom.errors.DicomInputError` with a reason that names the transfer syntax when no
  decoder can.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from node.dicom.errors import CORRUPT_DICOM, TRUNCATED, UNDECODABLE_PIXELS, DicomInputError
from node.dicom.negotiation import describe

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float Pixel Data
TRAILING_PADDING = 0xFFFCFFFC
UNDEFINED = 0xFFFFFFFF
DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_CHUNK = 1 << 20


@dataclass
class Instance:
    """A file's header (``dataset``, pixels not read), its digest and where the data set starts."""

    path: Path
    dataset: Dataset
    digest: str
    has_meta: bool

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID", "") or "")

    @property
    def transfer_syntax(self) -> str:
        return str(self.dataset.file_meta.get("TransferSyntaxUID", "") or "") if self.has_meta else ""


def _meta_end(head: bytes) -> int:
    """Offset of the first data set byte: after the 128-byte preamble, ``DICM`` and the group 0002
    elements (always Explicit VR Little Endian, PS3.10 7.1); 0 for a bare data set."""
    if head[128:132] != b"DICM":
        return 0
    offset = 132
    while len(head) >= offset + 8:
        group, = struct.unpack_from("<H", head, offset)
        if group != 0x0002:
            break
        vr = head[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            length, = struct.unpack_from("<I", head, offset + 8)
            offset += 12 + length
        else:
            length, = struct.unpack_from("<H", head, offset + 6)
            offset += 8 + length
    return offset


def _digest(fp, start: int) -> str:
    fp.seek(start)
    sha = hashlib.sha256()
    for chunk in iter(lambda: fp.read(_CHUNK), b""):
        sha.update(chunk)
    return sha.hexdigest()


def _short_element(ds: Dataset) -> str | None:
    """The first top-level element whose value the file holds fewer bytes of than it declares."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, UNDEFINED) and len(value) < length:
            return f"element {tag} declares {length} bytes but the file holds {len(value)}"
    return None


def _pixel_shortfall(fp, size: int, ds: Dataset, implicit: bool, little: bool) -> str | None:
    """Whether the file ends inside the Pixel Data element ``fp`` is positioned at.

    Native pixels (defined length): the declared length must fit in the file.  Encapsulated pixels
    (undefined length, PS3.5 A.4): the items must end with a Sequence Delimitation Item.
    """
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None  # no pixel data element at all: nothing to be cut
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) not in PIXEL_TAGS:
        return None
    if implicit:
        length, = struct.unpack(endian + "I", head[4:8])
        value_at = start + 8
    elif head[4:6] in _LONG_VRS:
        length, = struct.unpack(endian + "I", head[8:12])
        value_at = start + 12
    else:
        length, = struct.unpack(endian + "H", head[6:8])
        value_at = start + 8
    if length != UNDEFINED:
        if value_at + length > size:
            return f"Pixel Data declares {length} bytes but the file holds {max(size - value_at, 0)}"
        return None
    position = value_at
    while position + 8 <= size:
        fp.seek(position)
        tag_group, tag_element, item_length = struct.unpack(endian + "HHI", fp.read(8))
        if (tag_group, tag_element) == (0xFFFE, 0xE0DD):
            return None
        if (tag_group, tag_element) != (0xFFFE, 0xE000) or item_length == UNDEFINED:
            return f"encapsulated Pixel Data has a malformed item at byte {position}"
        position += 8 + item_length
    frames = ds.get("NumberOfFrames", 1)
    return f"encapsulated Pixel Data ({frames} frame(s)) ends before its sequence delimiter"


def _looks_like_dataset(ds: Dataset) -> bool:
    """A bare data set read with ``force=True`` is accepted only with a SOP Common module."""
    uids = [str(ds.get(k, "") or "") for k in ("SOPClassUID", "SOPInstanceUID")]
    return all(uid and UID(uid).is_valid for uid in uids)


def read_instance(path: str | Path) -> Instance:
    """Header, digest and integrity of one file.

    Raises :class:`InvalidDicomError` when the file is not DICOM at all, and
    :class:`DicomInputError` (``TRUNCATED``, ``CORRUPT_DICOM``) when it is DICOM but cut short or
    unparseable.  Deflated data sets (PS3.5 A.5) are inflated by pydicom and checked as a whole.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fp:
        head = fp.read(64 * 1024)
        has_meta = head[128:132] == b"DICM"
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_meta)
        except InvalidDicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
            raise DicomInputError(CORRUPT_DICOM, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None
        if not has_meta and not _looks_like_dataset(ds):
            raise InvalidDicomError("no DICM prefix, and not a bare data set with SOP Class/Instance UIDs")
        short = _short_element(ds)
        if short:
            raise DicomInputError(TRUNCATED, f"file cut short: {short}")
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "") if has_meta else ""
        if syntax != DEFLATED:
            implicit = ds.is_implicit_VR if ds.is_implicit_VR is not None else True
            little = ds.is_little_endian if ds.is_little_endian is not None else True
            short = _pixel_shortfall(fp, size, ds, implicit, little)
            if short:
                raise DicomInputError(TRUNCATED, f"file cut short: {short}")
        digest = _digest(fp, _meta_end(head))
    if syntax == DEFLATED:
        _check_deflated(path)
    return Instance(path, ds, digest, has_meta)


def _check_deflated(path: Path) -> None:
    try:
        full = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - zlib and pydicom errors alike
        raise DicomInputError(TRUNCATED, f"deflated data set cannot be inflated whole ({exc})") from None
    short = _short_element(full)
    if short:
        raise DicomInputError(TRUNCATED, f"file cut short: {short}")


def read_bytes_instance(data: bytes, label: str) -> Instance:
    """:func:`read_instance` of received bytes (a C-STORE data set with its File Meta)."""
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    return Instance(Path(label), ds, hashlib.sha256(memoryview(data)[_meta_end(data[:64 * 1024]):]).hexdigest(), True)


def read_full(path: str | Path) -> Dataset:
    """The whole data set of ``path`` (pixels included), also without File Meta."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
        if not _looks_like_dataset(ds):
            raise
        return ds


# -- pixels ------------------------------------------------------------------------------------------


def transfer_syntax_of(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return str(syntax)
    return "1.2.840.10008.1.2" if ds.is_implicit_VR in (True, None) else (
        "1.2.840.10008.1.2.1" if ds.is_little_endian in (True, None) else "1.2.840.10008.1.2.2")


def pixel_array(ds: Dataset) -> np.ndarray:
    """Decoded pixels of ``ds`` (all frames); :class:`DicomInputError` ``UNDECODABLE_PIXELS`` if not."""
    if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax_of(ds)
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad or unsupported data
        syntax = transfer_syntax_of(ds)
        detail = " ".join(str(exc).split())
        raise DicomInputError(UNDECODABLE_PIXELS, f"{ds.filename}: pixel data in {describe(syntax)} "
                                                  f"cannot be decoded ({type(exc).__name__}: {detail})") from None


# -- sameness ----------------------------------------------------------------------------------------


def _attributes(ds: Dataset) -> dict:
    return {tag: ds[tag].value for tag in ds.keys()
            if tag.group != 0x0002 and tag not in PIXEL_TAGS and tag != TRAILING_PADDING}


def compare_instances(a: str | Path, b: str | Path) -> str | None:
    """``None`` when the two files hold the same instance, else what differs (for the reason).

    Attributes are compared by value (so Implicit vs Explicit VR, or byte order, does not matter)
    and pixel data by its decoded values when the encodings differ; pixels that cannot be decoded
    cannot be shown to be the same, and count as different.
    """
    first, second = read_full(a), read_full(b)
    attrs_a, attrs_b = _attributes(first), _attributes(second)
    differing = sorted({t for t in attrs_a.keys() | attrs_b.keys() if attrs_a.get(t) != attrs_b.get(t)})
    if differing:
        names = ", ".join(pydicom.datadict.keyword_for_tag(t) or str(t) for t in differing[:5])
        return f"attributes differ: {names}" + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
    tag = next((t for t in PIXEL_TAGS if t in first or t in second), None)
    if tag is None:
        return None
    if tag not in first or tag not in second:
        return "one copy has no pixel data"
    syntax_a, syntax_b = transfer_syntax_of(first), transfer_syntax_of(second)
    if syntax_a == syntax_b and first[tag].value == second[tag].value:
        return None
    # Different encodings, one codec with different bitstreams, or padding: compare what they decode to.
    try:
        same = np.array_equal(pixel_array(first), pixel_array(second))
    except DicomInputError as exc:
        return f"pixel data in {describe(syntax_a)} and {describe(syntax_b)} cannot be compared ({exc})"
    return None if same else f"decoded pixel values differ ({describe(syntax_a)} vs {describe(syntax_b)})"
