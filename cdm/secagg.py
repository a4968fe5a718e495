"""Secure summation among the sites of a job (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning"; pairwise masks as in SecAgg+, Bell et al. 2020).

Each site ``i`` adds to its vector ``x_i`` one pseudo-random mask per other site ``j``: ``+PRG(s_ij)``
when ``i < j`` (by site name), ``-PRG(s_ij)`` otherwise.  The pairwise seed ``s_ij`` is the same at
both ends, so every mask cancels in the sum over all sites, and the coordinator, which only ever
holds the masked vectors ``y_i``, learns ``sum_i x_i`` and nothing else about any one ``x_i``.

* **Keys.**  Each site holds an X25519 key pair (RFC 7748) of its own, generated at the node and never
  sent anywhere; its public half travels in a *key certificate* (:func:`certify`): a record naming
  the site, the key and the key epoch (the fingerprint of the site's Ed25519 signing key), signed
  with that signing key.  The coordinator relays each site's certificate in every secure request
  (:class:`Peers`), and every node checks every peer's certificate against the Ed25519 key *it*
  trusts for that site (:func:`certified_key`), so a coordinator that substitutes a key of its own
  (to unmask one site, Bonawitz et al. 2017, 6: the server must not be trusted to relay keys) is
  caught: it cannot sign as the site.  A new signing key means a new X25519 key and a new epoch
  (:func:`site_key_path`).
* **Seeds.**  ``s_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = SHA-256(session, spec, peers))``
  (RFC 5869): a fresh seed per job, round, attempt, analysis and peer set.  A node masks one
  context only once (the node's ledger of contexts), so the difference of two masked vectors never
  reveals the difference of two inputs (e.g. before and after an ingest).
* **PRG.**  The ChaCha20 key stream (RFC 8439) under ``s_ij``: 16 bytes per value.
* **Fixed point.**  Values are carried as integers modulo ``2**128`` (two 64-bit limbs, numpy
  vectorised) at scale ``2**SCALE_BITS``: resolution ``2**-48`` (3.6e-15) absolute per value, and
  the sum over all sites must stay within ``+-2**(127 - SCALE_BITS)`` = ``+-2**79`` (6e23), which a
  node checks for its own share (``|x_i| <= 2**79 / sites``) before masking.  One 64-bit word cannot
  hold both the range of unscaled Hessians (1e10 and more) and 1e-9 relative precision on the small
  late-time risk-set sums of a Cox model, hence two words.  Every value is rounded once (at its site),
  so a pooled sum carries at most ``sites * 2**-49`` absolute error: pooled fits equal the pooled
  reference to floating-point accuracy.

Flower's ``flwr.common.secure_aggregation`` (flwr is pinned) was judged and not used for the masks:
its ``pseudo_rand_gen`` seeds numpy's Mersenne Twister with a 32-bit fold of the seed (2**32 guesses
recover a mask; not a cryptographic PRG), and its ``quantize`` clips and rounds stochastically (not
exact).  Its X25519/HKDF helpers are thin wrappers around ``cryptography``, used here directly.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cdm.errors import RadfedError
from cdm.wire import Signer, WireError, canonical, key_fingerprint, loads, public_key_text, verify

PROTOCOL = "radfed-secagg/1"
#: what a key certificate's record says it is (:func:`certify`)
CERTIFICATE = "radfed-secagg-key"
SCALE_BITS = 48
SCALE = float(2 ** SCALE_BITS)
#: the largest |sum over all sites| that decodes correctly
SUM_BOUND = float(2 ** (127 - SCALE_BITS))
#: fewest sites for which a sum hides each one: with two, each site gets the other's by subtraction
MIN_SITES = 3


class SecAggError(RadfedError, ValueError):
    """A secure-summation input or message is unusable (bad key, out of range, wrong length)."""


# --------------------------------------------------------------------------- keys


def generate_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """base64 of the 32 raw bytes of the public key (what heartbeats and requests carry)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_public(text: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(base64.b64decode(str(text), validate=True))
    except (ValueError, TypeError) as exc:
        raise SecAggError(f"not an X25519 public key: {exc}") from None


def site_key_path(data_dir: str | Path, signing_public: str) -> Path:
    """Where a node keeps the X25519 key that belongs to its current signing key: a rotated signing
    key (a new fingerprint) finds no file and gets a new X25519 key, so the two rotate together."""
    fingerprint = hashlib.sha256(signing_public.encode("ascii")).hexdigest()[:16]
    return Path(data_dir) / "keys" / f"secagg-{fingerprint}.x25519.pem"


def load_or_create(path: str | Path) -> X25519PrivateKey:
    """The node's X25519 private key at ``path`` (created, mode 0600, when absent)."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, X25519PrivateKey):
            raise SecAggError(f"{path} is not an X25519 private key")
        return key
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


# --------------------------------------------------------------------------- key certificates


def certify(signer: Signer, key: X25519PrivateKey | X25519PublicKey) -> dict:
    """The signed envelope (as an object) binding ``key``'s public half to ``signer``'s site and key
    epoch: what the heartbeat carries and the coordinator relays unchanged."""
    signing = public_key_text(signer.key)
    record = {"type": CERTIFICATE, "protocol": PROTOCOL, "site": signer.name, "key": public_text(key),
              "epoch": key_fingerprint(signing), "signing_key": signing}
    return loads(signer.seal(record))


def certificate_record(certificate) -> dict:
    """The record of a certificate, unverified (which key it claims, which signing key it names)."""
    record = certificate.get("record") if isinstance(certificate, dict) else None
    if not isinstance(record, dict) or record.get("type") != CERTIFICATE or not isinstance(record.get("key"), str):
        raise SecAggError("not a secure-aggregation key certificate (the peer's key must be signed by its site)")
    return record


def certified_key(certificate, site: str, trusted_signing_key: str) -> str:
    """The X25519 key ``certificate`` binds to ``site``, if the certificate is signed by
    ``trusted_signing_key`` (the Ed25519 key the caller trusts for ``site``) and names that key's epoch;
    :class:`SecAggError` otherwise."""
    record = certificate_record(certificate)
    try:
        signed = verify(canonical(certificate), site, trusted_signing_key)
    except WireError as exc:
        raise SecAggError(f"{site}'s key certificate is not signed by the key trusted for {site}: {exc}") from None
    if signed.get("site") != site or signed.get("protocol") != PROTOCOL:
        raise SecAggError(f"{site}'s key certificate names site {signed.get('site')!r} / protocol "
                          f"{signed.get('protocol')!r}")
    if signed.get("epoch") != key_fingerprint(trusted_signing_key.strip()):
        raise SecAggError(f"{site}'s key certificate is of another key epoch than the key trusted for {site}")
    return str(record["key"])


# --------------------------------------------------------------------------- seeds and masks


@dataclass(frozen=True)
class Peers:
    """One secure summation: its ``session`` (job / round / attempt) and every site's public key, with
    the certificates they came in (site -> :func:`certify` envelope) when they came in one."""

    session: str
    keys: dict  # site -> public key text
    certificates: dict | None = None

    @classmethod
    def from_request(cls, secure: dict) -> "Peers":
        """The peers a request names; the certificates are parsed here and verified by the caller
        (:func:`certified_key`, against the keys *it* trusts)."""
        if not isinstance(secure, dict) or not isinstance(secure.get("session"), str) \
                or not isinstance(secure.get("peers"), dict):
            raise SecAggError("secure: needs a session string and a peers object")
        certificates = {str(site): certificate for site, certificate in secure["peers"].items()}
        keys = {site: certificate_record(certificate)["key"] for site, certificate in certificates.items()}
        return cls(secure["session"], keys, certificates)


def context(peers: Peers, spec: dict) -> bytes:
    """What every pairwise seed of one summation is bound to (HKDF ``info``)."""
    return hashlib.sha256(canonical({"protocol": PROTOCOL, "session": peers.session, "spec": spec,
                                     "peers": peers.keys})).digest()


def pair_seed(own: X25519PrivateKey, other_public: str, info: bytes) -> bytes:
    shared = own.exchange(load_public(other_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def prg(seed: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random values modulo 2**128 as a (2, n) uint64 array (ChaCha20 key stream)."""
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor().update(b"\0" * (16 * n))
    return np.frombuffer(stream, dtype="<u8").reshape(n, 2).T.copy()


# --------------------------------------------------------------------------- arithmetic modulo 2**128


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = a[0] + b[0]
    carry = (lo < a[0]).astype(np.uint64)
    return np.stack([lo, a[1] + b[1] + carry])


def neg(a: np.ndarray) -> np.ndarray:
    lo = ~a[0] + np.uint64(1)
    carry = (lo == 0).astype(np.uint64)
    return np.stack([lo, ~a[1] + carry])


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return add(a, neg(b))


def zeros(n: int) -> np.ndarray:
    return np.zeros((2, n), dtype=np.uint64)


def encode(values, sites: int = 1) -> np.ndarray:
    """Floats -> fixed point modulo 2**128 (rounded to the nearest ``2**-SCALE_BITS``).

    Refuses non-finite values and values whose sum over ``sites`` sites could leave the range."""
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise SecAggError("a value to be summed is not finite")
    if x.size and np.max(np.abs(x)) > SUM_BOUND / max(sites, 1):
        raise SecAggError(f"a value exceeds the secure-summation range (|x| <= 2**{127 - SCALE_BITS} / sites)")
    magnitude = np.round(np.abs(x) * SCALE)      # exact: power-of-two scaling, integer-valued float
    hi = np.floor(magnitude / 2.0 ** 64)
    lo = magnitude - hi * 2.0 ** 64               # exact: the low bits of an integer-valued float
    out = np.stack([lo.astype(np.uint64), hi.astype(np.uint64)])
    negative = x < 0
    if np.any(negative):
        out[:, negative] = neg(out[:, negative])
    return out


def decode(a: np.ndarray) -> np.ndarray:
    """Fixed point modulo 2**128 -> floats (two's complement: the upper half of the ring is negative)."""
    negative = a[1] >= np.uint64(2 ** 63)
    magnitude = np.where(negative, neg(a), a)
    value = (magnitude[1].astype(float) * 2.0 ** 64 + magnitude[0].astype(float)) / SCALE
    return np.where(negative, -value, value)


# --------------------------------------------------------------------------- masking


def mask(values, site: str, own: X25519PrivateKey, peers: Peers, spec: dict) -> np.ndarray:
    """This site's masked share: ``encode(values) + sum_{j > site} PRG(s_ij) - sum_{j < site} PRG(s_ij)``."""
    if site not in peers.keys:
        raise SecAggError(f"{site} is not among the peers of this summation")
    if peers.keys[site] != public_text(own):
        raise SecAggError(f"the request names another public key for {site} than this node's own")
    if len(peers.keys) < 2:
        raise SecAggError("a secure summation needs at least two sites")
    out = encode(values, len(peers.keys))
    info = context(peers, spec)
    n = out.shape[1]
    for other, key in sorted(peers.keys.items()):
        if other == site:
            continue
        stream = prg(pair_seed(own, key, info), n)
        out = add(out, stream) if site < other else sub(out, stream)
    return out


def unmask(shares: list[np.ndarray]) -> np.ndarray:
    """The sum of every site's masked share, decoded (the masks cancel only when no share is missing)."""
    if not shares:
        raise SecAggError("no shares to sum")
    n = shares[0].shape[1]
    total = zeros(n)
    for share in shares:
        if share.shape != (2, n):
            raise SecAggError(f"a share has {share.shape[1]} values, expected {n}")
        total = add(total, share)
    return decode(total)


def to_text(share: np.ndarray) -> str:
    return base64.b64encode(share.T.astype("<u8").tobytes()).decode("ascii")


def from_text(text: str, n: int) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise SecAggError("masked share is not base64") from None
    if len(raw) != 16 * n:
        raise SecAggError(f"masked share has {len(raw) // 16} values, expected {n}")
    return np.frombuffer(raw, dtype="<u8").reshape(n, 2).T.copy()
