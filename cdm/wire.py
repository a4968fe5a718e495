"""What crosses the bus: request and response records, canonical JSON, Ed25519 signatures.

Shared by :mod:`node` (which verifies requests and signs responses) and :mod:`coordinator` (which
signs requests and verifies responses against the key it enrolled for each site).  Records are plain
dicts, as in ``docs/analysis-rounds.md``; this module only adds the envelope around them::

    {"record": {...request or response...}, "signer": "site-a", "signature": "<base64 Ed25519>"}

The signature covers the *canonical JSON* of the record (UTF-8, keys sorted, no whitespace), so any
change to any field -- a count, a site name, the request id it answers -- invalidates it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cdm.errors import RadfedError
from cdm.messages import RefusalCode, ReplyStatus
from cdm.records import SiteResponse, ValidationError, problems

SUBJECT_PREFIX = "radfed.site"
OFFLINE_PREFIX = "radfed.offline"     # JetStream: durable queue of requests for sites that are offline
OFFLINE_STREAM = "RADFED_OFFLINE"
WIRE_VERSION = 1
STATUSES = tuple(ReplyStatus)


class WireError(RadfedError, ValueError):
    """A message is malformed, unsigned, or its signature does not verify."""

    http_status = 400


class EnvelopeError(WireError):
    """Bytes that are not a signed radfed envelope, or whose signature does not verify; a node
    answers such a request BAD_SIGNATURE without running it (node/bus_handler.py, cdm.errors.reply_of)."""

    reply_code = RefusalCode.BAD_SIGNATURE

    def reply_message(self) -> str:
        return f"request rejected: {self}"


# --------------------------------------------------------------------------- subjects


def request_subject(site: str) -> str:
    """Where the coordinator asks ``site`` (live requests); only that site may subscribe
    (coordinator/natsconf.py)."""
    return f"{SUBJECT_PREFIX}.{site}.request"


def heartbeat_subject(site: str) -> str:
    """Where ``site`` publishes its signed heartbeat ("*": the coordinator listens to all)."""
    return f"{SUBJECT_PREFIX}.{site}.heartbeat"


def response_subject(site: str) -> str:
    """Where a site answers requests it pulled from its durable (JetStream) queue."""
    return f"{SUBJECT_PREFIX}.{site}.response"


def offline_subject(site: str) -> str:
    """The JetStream subject holding requests for ``site`` while it is offline (stream
    :data:`OFFLINE_STREAM`); the site pulls them when it returns."""
    return f"{OFFLINE_PREFIX}.{site}"


def site_inbox(site: str) -> str:
    """The prefix of ``site``'s reply inboxes: its own, so no other site can read its answers."""
    return f"_INBOX_{site}"


def valid_site_name(name: str) -> bool:
    """Site names become NATS subject tokens and user names: letters, digits, '-' and '_' only."""
    return bool(name) and len(name) <= 64 and all(c.isalnum() and c.isascii() or c in "-_" for c in name)


# --------------------------------------------------------------------------- canonical JSON


def canonical(obj) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8 (what is signed and hashed)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise WireError(f"record is not JSON-serialisable: {exc}") from None


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(canonical(spec)).hexdigest()


def loads(data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None


# --------------------------------------------------------------------------- records


#: How long a request stays valid when nobody says otherwise: a live request is answered in seconds;
#: one queued for an offline site is given the time it is held (coordinator/service.py).
REQUEST_TTL_SECONDS = 600.0
#: Clocks of coordinator and site may differ by this much before a request counts as stale or early.
CLOCK_SKEW_SECONDS = 120.0
#: The longest validity a site accepts: it keeps every nonce until its request expires, so this bounds
#: the nonce store (node/disclosure/requests.py) as well as how long captured bytes stay usable.
MAX_REQUEST_LIFETIME_SECONDS = 7 * 24 * 3600.0


def make_request(spec: dict, requester: str, job_id: str | None = None, request_id: str | None = None, *,
                 site: str | None = None, ttl: float = REQUEST_TTL_SECONDS, now: float | None = None) -> dict:
    """A request record for ``site``: the signature (:meth:`Signer.seal`) covers the target site, the
    issue and expiry times and a random nonce, so captured bytes cannot run at another site, after
    their expiry, or a second time (:func:`check_fresh`, and the node's nonce store)."""
    issued = time.time() if now is None else now
    ttl = min(ttl, MAX_REQUEST_LIFETIME_SECONDS)
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "job_id": job_id or str(uuid.uuid4()),
        "requester": requester,
        "site": site,
        "issued_at": round(issued, 3),
        "expires_at": round(issued + ttl, 3),
        "nonce": secrets.token_hex(16),
        "spec": spec,
    }


class StaleRequest(WireError):
    """A verified request that must still not run here: ``code`` is MISDIRECTED, STALE or REPLAYED."""

    reply_status = ReplyStatus.REFUSED

    def __init__(self, code: str, message: str):
        self.code = self.reply_code = RefusalCode(code)
        super().__init__(message)

    def reply_message(self) -> str:
        return f"request not run: {self}"


def check_fresh(request: dict, site: str, now: float | None = None) -> None:
    """Raise :class:`StaleRequest` unless ``request`` names ``site``, carries a nonce, and is valid now
    (issued no later than now + skew, expiring no earlier than now - skew, lifetime at most
    :data:`MAX_REQUEST_LIFETIME_SECONDS`).  Replays within the validity are the node's nonce store's."""
    now = time.time() if now is None else now
    target = request.get("site")
    if target != site:
        raise StaleRequest("MISDIRECTED", f"request is addressed to site {target!r}, not to {site!r}")
    nonce, issued, expires = request.get("nonce"), request.get("issued_at"), request.get("expires_at")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise StaleRequest("STALE", "request carries no nonce")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (issued, expires)):
        raise StaleRequest("STALE", "request carries no issue or expiry time")
    if expires - issued > MAX_REQUEST_LIFETIME_SECONDS or expires < issued:
        raise StaleRequest("STALE", f"request claims a validity of {expires - issued:.0f} s "
                                    f"(at most {MAX_REQUEST_LIFETIME_SECONDS:.0f} s accepted)")
    if issued > now + CLOCK_SKEW_SECONDS:
        raise StaleRequest("STALE", f"request is issued {issued - now:.0f} s in the future (clock skew?)")
    if expires < now - CLOCK_SKEW_SECONDS:
        raise StaleRequest("STALE", f"request expired {now - expires:.0f} s ago")


def make_response(request: dict, site: str, status: str, code: str | None = None, message: str = "",
                  result: dict | None = None) -> dict:
    return {
        "request_id": request.get("request_id"),
        "site": site,
        "status": status,
        "code": code,
        "message": message,
        "result": result,
    }


def check_response(response: dict, request_id: str, site: str) -> None:
    """A response must answer *this* request, from *this* site, and have a reply's shape
    (:class:`cdm.records.SiteResponse`: a known status, a declared refusal code)."""
    if not isinstance(response, dict):
        raise WireError("response is not an object")
    if response.get("request_id") != request_id:
        raise WireError(f"response answers request {response.get('request_id')!r}, not {request_id!r}")
    if response.get("site") != site:
        raise WireError(f"response claims site {response.get('site')!r}, expected {site!r}")
    try:
        SiteResponse.model_validate(response)
    except ValidationError as exc:
        raise WireError(f"response is malformed: {problems(exc)}") from None


# --------------------------------------------------------------------------- keys


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A public key as base64 of its 32 raw bytes (what the coordinator stores per site)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WireError(f"cannot read signing key {str(path)!r}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise WireError(f"{str(path)!r} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise WireError(f"{str(path)!r} is not an Ed25519 key")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise WireError(f"not an Ed25519 public key: {exc}") from None


def key_fingerprint(public_text: str) -> str:
    return hashlib.sha256(public_text.encode("ascii")).hexdigest()[:16]


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True)
class Signer:
    """Signs records as ``name`` with an Ed25519 private key."""

    name: str
    key: Ed25519PrivateKey

    def seal(self, record: dict) -> bytes:
        """The wire bytes of ``record`` in a signed envelope."""
        signature = self.key.sign(canonical(record))
        return canonical({
            "v": WIRE_VERSION,
            "record": record,
            "signer": self.name,
            "signature": base64.b64encode(signature).decode("ascii"),
        })


def open_envelope(data: bytes) -> tuple[dict, str, bytes]:
    """(record, signer, signature) from wire bytes, without verifying; malformed -> WireError."""
    envelope = loads(data)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("record"), dict):
        raise EnvelopeError("message is not a radfed envelope (no 'record' object)")
    signer, signature = envelope.get("signer"), envelope.get("signature")
    if not isinstance(signer, str) or not isinstance(signature, str):
        raise EnvelopeError("message is not signed")
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raise EnvelopeError("signature is not base64") from None
    return envelope["record"], signer, raw


def verify(data: bytes, expected_signer: str, public_key: Ed25519PublicKey | str) -> dict:
    """The record in ``data`` if it is signed by ``expected_signer`` with ``public_key``; else WireError."""
    record, signer, signature = open_envelope(data)
    if signer != expected_signer:
        raise EnvelopeError(f"signed by {signer!r}, expected {expected_signer!r}")
    key = load_public_key(public_key) if isinstance(public_key, str) else public_key
    try:
        key.verify(signature, canonical(record))
    except InvalidSignature:
        raise EnvelopeError(f"bad signature: the message does not verify against the key enrolled for {expected_signer!r}") from None
    return record
