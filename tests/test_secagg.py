"""Secure summation primitives (cdm/secagg.py): exact sums, masks that hide each share, keys."""

import numpy as np
import pytest

from cdm import secagg


def _sites(n):
    keys = {f"site-{chr(97 + i)}": secagg.generate_key() for i in range(n)}
    return keys, secagg.Peers("job-1/round-1/attempt-1", {s: secagg.public_text(k) for s, k in keys.items()})


def test_fixed_point_round_trip_is_exact_to_the_stated_resolution():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=1000) * 10.0 ** rng.integers(-12, 18, size=1000),
                        [0.0, -0.0, 1.0, -1.0, 2.0 ** 70, -(2.0 ** 70), 2.0 ** -48, -3.5]])
    back = secagg.decode(secagg.encode(x))
    assert np.all(np.abs(back - x) <= 2.0 ** -49 + np.abs(x) * 2.0 ** -52)


def test_modular_arithmetic_carries_between_limbs():
    a = secagg.encode([2.0 ** 15.9, -(2.0 ** 20), 123.25])
    b = secagg.encode([2.0 ** 15.9, 2.0 ** 20 - 0.5, -123.25])
    assert secagg.decode(secagg.add(a, b)).tolist() == [2 * 2.0 ** 15.9, -0.5, 0.0]
    assert secagg.decode(secagg.sub(a, a)).tolist() == [0.0, 0.0, 0.0]


def test_out_of_range_and_non_finite_values_are_refused():
    with pytest.raises(secagg.SecAggError, match="range"):
        secagg.encode([secagg.SUM_BOUND / 2], sites=3)
    with pytest.raises(secagg.SecAggError, match="finite"):
        secagg.encode([np.nan])


def test_masked_shares_sum_to_the_pooled_sum_and_each_share_looks_random():
    keys, peers = _sites(4)
    spec = {"analysis": {"type": "count"}}
    rng = np.random.default_rng(2)
    values = {s: rng.normal(size=500) * 1e6 for s in keys}
    shares = {s: secagg.mask(values[s], s, keys[s], peers, spec) for s in keys}
    pooled = secagg.unmask(list(shares.values()))
    exact = sum(values.values())
    assert np.max(np.abs(pooled - exact) / np.maximum(np.abs(exact), 1.0)) < 1e-12
    for s, share in shares.items():  # a share decodes to noise far from its site's values
        assert np.median(np.abs(secagg.decode(share) - values[s])) > 1e15
    # three of four shares do not cancel: a missing site leaves the sum masked
    partial = secagg.unmask([shares[s] for s in sorted(keys)[:3]])
    assert np.median(np.abs(partial - exact)) > 1e15


def test_seeds_depend_on_session_spec_and_peers():
    keys, peers = _sites(3)
    x = np.ones(8)
    base = secagg.mask(x, "site-a", keys["site-a"], peers, {"a": 1})
    assert np.array_equal(base, secagg.mask(x, "site-a", keys["site-a"], peers, {"a": 1}))
    other_spec = secagg.mask(x, "site-a", keys["site-a"], peers, {"a": 2})
    other_session = secagg.mask(x, "site-a", keys["site-a"], secagg.Peers("job-1/round-1/attempt-2", peers.keys),
                                {"a": 1})
    assert not np.array_equal(base, other_spec) and not np.array_equal(base, other_session)


def test_a_request_naming_another_key_for_this_site_is_refused():
    keys, peers = _sites(3)
    with pytest.raises(secagg.SecAggError, match="another public key"):
        secagg.mask([1.0], "site-a", keys["site-b"], peers, {})
    with pytest.raises(secagg.SecAggError, match="not among"):
        secagg.mask([1.0], "site-z", keys["site-a"], peers, {})


def test_wire_text_and_layout_round_trip():
    keys, peers = _sites(3)
    share = secagg.mask([1.5, 2.5, 3.0], "site-b", keys["site-b"], peers, {})
    assert np.array_equal(secagg.from_text(secagg.to_text(share), 3), share)
    with pytest.raises(secagg.SecAggError, match="expected 4"):
        secagg.from_text(secagg.to_text(share), 4)


def test_site_key_follows_the_signing_key(tmp_path):
    first = secagg.load_or_create(secagg.site_key_path(tmp_path, "AAAA"))
    again = secagg.load_or_create(secagg.site_key_path(tmp_path, "AAAA"))
    rotated = secagg.load_or_create(secagg.site_key_path(tmp_path, "BBBB"))
    assert secagg.public_text(first) == secagg.public_text(again) != secagg.public_text(rotated)
    assert (secagg.site_key_path(tmp_path, "AAAA").stat().st_mode & 0o777) == 0o600


def test_a_key_certificate_binds_the_key_to_its_site_and_signing_key():
    from cdm.wire import Signer, generate_key, public_key_text

    signing, other = generate_key(), generate_key()
    key = secagg.generate_key()
    certificate = secagg.certify(Signer("site-b", signing), key)
    trusted = public_key_text(signing)
    assert secagg.certified_key(certificate, "site-b", trusted) == secagg.public_text(key)
    swapped = {**certificate, "record": {**certificate["record"], "key": secagg.public_text(secagg.generate_key())}}
    for bad, site, by in ((swapped, "site-b", trusted),                                       # key replaced
                          (secagg.certify(Signer("site-b", other), key), "site-b", trusted),  # another signer
                          (certificate, "site-c", trusted),                                   # another site
                          (certificate, "site-b", public_key_text(other))):                   # another trust
        with pytest.raises(secagg.SecAggError):
            secagg.certified_key(bad, site, by)
    with pytest.raises(secagg.SecAggError, match="certificate"):
        secagg.Peers.from_request({"session": "s", "peers": {"site-b": secagg.public_text(key)}})
