"""Which instances the node accepts over the network: storage SOP classes and transfer syntaxes.

A PACS holds what its modalities sent, years of it: retired classes (the first Ultrasound Image
Storage, 1.2.840.10008.5.1.4.1.1.6, retired in 1993 but still in archives), trial SR classes, and
pixel data in the encoding the modality or the archive chose (JPEG lossless, JPEG 2000, RLE...).
An archive that cannot transcode offers only the stored encoding (PS3.4 B.4.1: an SCU proposes the
transfer syntaxes it can send), so a receiver that refuses it receives nothing.  The node therefore
accepts, as Storage SCP (PS3.4 Annex B):

* every storage SOP class of the DICOM standard, retired ones included (PS3.6 Annex A: each SOP
  Class whose name says Storage, except Storage Commitment and the Media Storage Directory, which
  are not C-STORE targets) — :data:`STORAGE_SOP_CLASSES`;
* every standard transfer syntax that encodes a data set on the network (PS3.5 Section 10 and Annex
  A): uncompressed, deflated, the JPEG processes (retired ones included), JPEG-LS, JPEG 2000 and
  High-Throughput JPEG 2000, RLE, the MPEG/HEVC video syntaxes and JPIP references —
  :data:`TRANSFER_SYNTAXES`.

Files are stored exactly as received; pixels are decoded only where a feature needs them
(:func:`node.dicom.instance.pixel_array`).  Private SOP classes an archive reports in a C-FIND are accepted for
that pull too (:mod:`node.dicom.pull`).

A requestor may propose at most 128 presentation contexts (PS3.8 Section 9.3.2.2), and a C-GET
requestor must propose one for every class it wants back (PS3.4 C.4.3.1): :func:`get_contexts`
proposes, per storage class, one context per transfer syntax, so that the archive can send each
instance in its stored encoding whatever syntax the archive would pick for a shared context.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID
from pynetdicom.presentation import build_context

#: Media Storage Directory Storage (1.2.840.10008.1.3.10) names DICOMDIR files, never a C-STORE.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: PS3.5 A.4's MIME and XML encodings and the retired Papyrus syntax do not encode DIMSE data sets.
_NOT_NETWORK_SYNTAXES = {"1.2.840.10008.1.2.6.1", "1.2.840.10008.1.2.6.2", "1.2.840.10008.1.20"}
#: At most 128 presentation contexts per association (PS3.8 9.3.2.2); the query/retrieve
#: context itself takes one, Verification another.
MAX_CONTEXTS = 126

STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(sorted(
    uid for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and "Commitment" not in name and uid != MEDIA_STORAGE_DIRECTORY
))

_UNCOMPRESSED_FIRST = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
TRANSFER_SYNTAXES: tuple[str, ...] = _UNCOMPRESSED_FIRST + tuple(sorted(
    uid for uid, (_name, kind, *_rest) in UID_dictionary.items()
    if kind == "Transfer Syntax" and uid not in _NOT_NETWORK_SYNTAXES and uid not in _UNCOMPRESSED_FIRST
))


def is_storage_class(uid: str) -> bool:
    return uid in _STORAGE_SET


_STORAGE_SET = frozenset(STORAGE_SOP_CLASSES)


def describe(uid: str | None) -> str:
    """``name (uid)`` for a SOP class or transfer syntax, for reports and quarantine reasons."""
    if not uid:
        return "(none)"
    name = UID(str(uid)).name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def add_storage_contexts(ae, sop_classes=STORAGE_SOP_CLASSES) -> None:
    """Make ``ae`` accept C-STORE of ``sop_classes`` in every transfer syntax (acceptor side).

    An acceptor has no context limit; for each proposed context pynetdicom picks the first of the
    proposer's syntaxes that is supported, so whatever encoding the sender prefers is kept.
    """
    for uid in sop_classes:
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))


def get_contexts(sop_classes, syntaxes=TRANSFER_SYNTAXES, limit: int = MAX_CONTEXTS) -> list[list]:
    """The C-GET storage contexts for ``sop_classes``, in groups of at most ``limit`` contexts.

    Each group is one association's worth: every class of a group gets one context per transfer
    syntax (so the archive never has to transcode), and a class is never split across groups.
    """
    per_class = [[build_context(uid, [syntax]) for syntax in syntaxes] for uid in dict.fromkeys(sop_classes)]
    groups: list[list] = []
    for contexts in per_class:
        if not groups or len(groups[-1]) + len(contexts) > limit:
            groups.append([])
        groups[-1].extend(contexts)
    return groups
