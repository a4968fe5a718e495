"""Algorithm-locked rounds (cdm/newton.py, node/secure.py) and the choice of secure or plain mode
(coordinator/secure.py), without a network."""

import numpy as np
import pandas as pd
import pytest

from cdm import newton
from cdm.rounds import cox_stratified
from coordinator.secure import SecureModeError, choose_mode
from coordinator.stats import run_analysis
from node.disclosure.policy import Refusal
from node.secure import check_lock


def _data(seed=3, n=200):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    time = rng.exponential(np.exp(-X @ [0.5, -0.3])) * 100
    return np.ceil(time), (rng.random(n) < 0.7).astype(int), X


def test_every_round_of_a_fit_is_the_one_a_node_recomputes_from_the_lock():
    stop, event, X = _data()
    seen = []

    def ask(analysis, extra):
        beta = np.asarray(analysis["beta"])
        assert newton.same_beta(beta, newton.expected_beta(2, extra.get("lock")))
        seen.append(beta)
        return [{**cox_stratified(None, stop, event, X, beta, "breslow"), "_site": "a"}]

    ask.carries_extra = True
    result = run_analysis({"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": ["x1", "x2"],
                           "mode": "stratified", "ties": "breslow"}, ask)
    assert result["convergence"]["converged"] and len(seen) == result["rounds"] >= 4
    assert seen[0].tolist() == [0.0, 0.0]


def _request(beta, lock=None):
    analysis = {"type": "cox_round", "time": {"event": {"kind": "death"}}, "covariates": ["a", "b"], "beta": beta}
    return {"spec": {"analysis": analysis}, **({"lock": lock} if lock is not None else {})}


def test_a_node_refuses_a_beta_it_would_not_have_proposed():
    stop, event, X = _data()
    check_lock(_request([0.0, 0.0]), None)  # the first round: the starting point
    with pytest.raises(Refusal, match="Newton step") as refused:
        check_lock(_request([0.0, 3.0]), None)
    assert refused.value.code == "ROUND_LOCKED"
    machine = newton.Newton(2)
    fit = cox_stratified(None, stop, event, X, [0.0, 0.0], "breslow")
    machine.observe(fit)
    lock = machine.lock([fit])
    honest = machine.propose().tolist()
    check_lock(_request(honest, lock), None)
    for tampered in ([honest[0] + 1e-3, honest[1]], [honest[0], 25.0]):
        with pytest.raises(Refusal, match="Newton step"):
            check_lock(_request(tampered, lock), None)
    forged = {**lock, "fits": [{**lock["fits"][0], "gradient": [1e6, 0.0]}]}  # a lock is replayed, not trusted
    assert not newton.same_beta(honest, newton.expected_beta(2, forged))
    with pytest.raises(Refusal, match="not usable"):
        check_lock(_request(honest, {**lock, "algorithm": "mine"}), None)
    glm_gaussian = {"spec": {"analysis": {"type": "glm_round", "family": "gaussian", "beta": [5.0]}}}
    check_lock(glm_gaussian, None)  # one round of sums: nothing to lock


def test_replay_matches_the_coordinators_stopping_rules():
    stop, event, X = _data(5, 60)
    machine, fits, betas = newton.Newton(2, max_iter=2), [], []
    while (beta := machine.propose()) is not None:
        betas.append(beta)
        fits.append(cox_stratified(None, stop, event, X, beta, "efron"))
        machine.observe(fits[-1])
    assert machine.iterations == 2 and not machine.converged  # stopped by max_iter, and the replay knows it
    assert newton.expected_beta(2, machine.lock(fits)) is None  # the lock ends the fit: no round is due
    for k in range(len(fits)):
        assert newton.expected_beta(2, machine.lock(fits[:k])).tolist() == betas[k].tolist()


BEAT = {"secagg": {"key": "k", "certificate": {"record": {}}, "required": False}}
COUNT = {"analysis": {"type": "count"}}


def test_secure_by_default_from_three_sites_and_never_with_two():
    assert choose_mode(COUNT, None, ["a", "b", "c"], {s: BEAT for s in "abc"}).secure
    two = choose_mode(COUNT, None, ["a", "b"], {s: BEAT for s in "ab"})
    assert not two.secure and "subtract" not in two.reason and "below 3" in two.reason
    with pytest.raises(SecureModeError, match="each site could subtract its own share"):
        choose_mode(COUNT, True, ["a", "b"], {s: BEAT for s in "ab"})
    required = {"a": {"secagg": {**BEAT["secagg"], "required": True}}, "b": BEAT}
    with pytest.raises(SecureModeError, match="required by a"):
        choose_mode(COUNT, None, ["a", "b"], required)
    with pytest.raises(SecureModeError, match="require"):
        choose_mode(COUNT, False, ["a", "b", "c"], {**required, "c": BEAT})
    assert not choose_mode(COUNT, False, ["a", "b", "c"], {s: BEAT for s in "abc"}).secure
    unknown = choose_mode(COUNT, None, ["a", "b", "c"], {"a": BEAT, "b": BEAT})
    assert not unknown.secure and "c announced no secure-aggregation key" in unknown.reason
    with pytest.raises(SecureModeError, match="announced no secure-aggregation key"):
        choose_mode(COUNT, True, ["a", "b", "c"], {"a": BEAT, "b": BEAT})


def test_an_analysis_without_a_secure_form_stays_plain_unless_secure_is_required():
    crosstab = {"analysis": {"type": "crosstab", "by": ["sex"]}}
    assert choose_mode(crosstab, None, ["a", "b", "c"], {s: BEAT for s in "abc"}).secure
    by_site = {"variables": {"where": {"kind": "site"}}, "analysis": {"type": "crosstab", "by": ["where"]}}
    mode = choose_mode(by_site, None, ["a", "b", "c"], {s: BEAT for s in "abc"})
    assert not mode.secure and "per site by definition" in mode.reason
    habitat = {"analysis": {"type": "habitat"}}
    assert not choose_mode(habitat, None, ["a", "b", "c"], {s: BEAT for s in "abc"}).secure
    km_by_sex = {"variables": {"sex": {"kind": "sex"}}, "analysis": {"type": "km", "group": "sex"}}
    mode = choose_mode(km_by_sex, None, ["a", "b", "c"], {s: BEAT for s in "abc"})
    assert not mode.secure and "declared in the spec" in mode.reason
    with pytest.raises(SecureModeError, match="declared in the spec"):
        choose_mode(km_by_sex, True, ["a", "b", "c"], {s: BEAT for s in "abc"})
    km_by_arm = {"variables": {"arm": {"kind": "condition", "codes": {"A": "X:1", "B": "X:2"}}},
                 "analysis": {"type": "km", "group": "arm"}}
    assert choose_mode(km_by_arm, None, ["a", "b", "c"], {s: BEAT for s in "abc"}).secure


def _node(tmp_path, extra=""):
    from cdm.wire import generate_key, private_key_pem
    from node.config import load_config

    (tmp_path / "site.key").write_bytes(private_key_pem(generate_key()))
    path = tmp_path / "node.toml"
    path.write_text(f'[site]\nname = "site-a"\ndata_dir = "{tmp_path / "data"}"\n'
                    f'[bus]\nurl = "nats://127.0.0.1:4222"\nsigning_key = "{tmp_path / "site.key"}"\n{extra}\n')
    return load_config(path)


def test_a_node_masks_its_share_and_refuses_what_would_unmask_it(sqlite_cdm, tmp_path):
    import json

    from cdm import secagg
    from node.execute import run_request
    from node.secure import describe
    from survival_sites import write_persons

    config = _node(tmp_path, "[secure]\nrequired = true")
    own = describe(config)["secagg"]
    assert own["required"] and own["key"]
    spec = {"cohort": {"index": {"kind": "condition", "codes": ["SNOMED:443487006"]}}, "analysis": {"type": "count"}}
    from cdm.wire import Signer, generate_key

    others = {s: secagg.certify(Signer(s, generate_key()), secagg.generate_key()) for s in ("site-b", "site-c")}
    mine = own["certificate"]

    def ask(peers, session="job/round-1/attempt-1"):
        secure = {"protocol": secagg.PROTOCOL, "session": session, "peers": peers} if peers is not None else None
        return run_request(sqlite_cdm, config, {"request_id": session, "requester": "r", "spec": spec,
                                                **({"secure": secure} if secure else {})})

    write_persons(sqlite_cdm, pd.DataFrame({"person_id": [1, 2], "yob": [1950, 1960], "time": [30.0, 40], "event": [1, 0]}))
    assert ask(None)["code"] == "SECURE_REQUIRED"  # this site answers a count only as a masked share
    assert ask({"site-a": mine, "site-b": others["site-b"]})["code"] == "SECURE_PEERS"  # two: subtractable
    assert ask({"site-a": others["site-b"], **others})["code"] == "SECURE_PEERS"  # not this node's key
    bare = {"site-a": mine, "site-b": others["site-b"]["record"]["key"], "site-c": others["site-c"]}
    assert ask(bare)["code"] == "SECURE_PEERS"  # a key without its site's signature
    answer = ask({"site-a": mine, **others})
    assert answer["status"] == "ok", answer
    share = answer["result"]["secure"]
    assert share["layout"] == [["n", []]] and share["size"] == 1
    assert secagg.decode(secagg.from_text(share["share"], 1))[0] != 2.0  # masked: not the count of 2
    assert ask({"site-a": mine, **others})["status"] == "ok"  # the same share again is harmless
    # site-b's key pinned on first use: a certificate signed by any other key for site-b is refused
    forged = secagg.certify(Signer("site-b", generate_key()), secagg.generate_key())
    refused = ask({"site-a": mine, "site-b": forged, "site-c": others["site-c"]}, session="job/round-9/attempt-1")
    assert refused["code"] == "SECURE_PEERS" and "not signed by the key trusted for site-b" in refused["message"]
    later = pd.DataFrame({"person_id": range(3, 23), "yob": 1970, "time": 50.0, "event": 1})  # past differencing_k
    write_persons(sqlite_cdm, later)
    again = ask({"site-a": mine, **others})  # same masks, other value: would reveal the difference
    assert again["code"] == "SECURE_REPLAY"
    assert ask({"site-a": mine, **others}, session="job/round-1/attempt-2")["status"] == "ok"
    audit = (tmp_path / "data" / "audit.jsonl").read_text()
    assert share["share"] not in audit and "share_sha256" in audit
    assert json.loads(audit.splitlines()[-1])


def test_pinned_peer_keys_refuse_a_substituted_key_even_at_first_contact(sqlite_cdm, tmp_path):
    from cdm import secagg
    from cdm.wire import Signer, generate_key, public_key_text
    from node.execute import run_request
    from node.secure import describe
    from survival_sites import write_persons

    signing = {s: generate_key() for s in ("site-b", "site-c")}
    genuine = {s: secagg.certify(Signer(s, k), secagg.generate_key()) for s, k in signing.items()}
    pins = "".join(f'{s} = "{public_key_text(k)}"\n' for s, k in signing.items())
    config = _node(tmp_path, f'[secure]\ntrust = "pinned"\n[secure.peers]\n{pins}')
    mine = describe(config)["secagg"]["certificate"]
    write_persons(sqlite_cdm, pd.DataFrame({"person_id": range(1, 9), "yob": 1950, "time": 30.0, "event": 1}))
    spec = {"cohort": {"index": {"kind": "condition", "codes": ["SNOMED:443487006"]}}, "analysis": {"type": "count"}}

    def ask(peers, session):
        return run_request(sqlite_cdm, config, {"request_id": session, "requester": "r", "spec": spec,
                                                "secure": {"protocol": secagg.PROTOCOL, "session": session,
                                                           "peers": {"site-a": mine, **peers}}})

    forged = secagg.certify(Signer("site-b", generate_key()), secagg.generate_key())  # never seen before
    assert ask({**genuine, "site-b": forged}, "j/round-1/attempt-1")["code"] == "SECURE_PEERS"
    stranger = secagg.certify(Signer("site-x", generate_key()), secagg.generate_key())
    refused = ask({**genuine, "site-x": stranger}, "j/round-1/attempt-2")
    assert refused["code"] == "SECURE_PEERS" and "no key is pinned for site-x" in refused["message"]
    assert ask(genuine, "j/round-1/attempt-3")["status"] == "ok"


def test_every_quantile_round_is_the_bisection_step_a_node_recomputes_and_no_other():
    from cdm.analyses.quantile import expected_thresholds

    rng = np.random.default_rng(11)
    sites = [np.round(rng.normal(60, 12, n), 1) for n in (140, 90, 70)]
    asked = []

    def ask(analysis, extra):
        request = {"spec": {"analysis": analysis}, "lock": extra.get("lock")}
        check_lock(request, None)  # what every node does over the bus
        asked.append(request)
        return [{"n": int(x.size), "n_le": [int((x <= t).sum()) for t in analysis["thresholds"]], "_site": f"s{i}"}
                for i, x in enumerate(sites)]

    ask.carries_extra = True
    probs = [0.5, 0.1, 0.95]
    result = run_analysis({"type": "quantile", "variable": "v", "probs": probs}, ask)
    pooled = np.concatenate(sites)
    assert [q["value"] for q in result["quantiles"]] == [np.quantile(pooled, p) for p in probs]
    assert len(asked) == result["rounds"] >= 2
    for request in asked[1:]:  # any other threshold, anywhere in the round, is refused
        thresholds = request["spec"]["analysis"]["thresholds"]
        for i in (0, len(thresholds) // 2, len(thresholds) - 1):
            tampered = {"spec": {"analysis": {**request["spec"]["analysis"],
                                              "thresholds": thresholds[:i] + [thresholds[i] + 0.05] + thresholds[i + 1:]}},
                        "lock": request["lock"]}
            with pytest.raises(Refusal, match="bisection step") as refused:
                check_lock(tampered, None)
            assert refused.value.code == "ROUND_LOCKED"
    # counts in the lock are replayed, not trusted: other counts give other thresholds
    second = asked[1]
    forged = {**second["lock"], "rounds": [{**r, "lower": [0] * len(r["lower"])} for r in second["lock"]["rounds"]]}
    assert expected_thresholds(forged) != second["spec"]["analysis"]["thresholds"]
    first = asked[0]["spec"]["analysis"]
    with pytest.raises(Refusal, match="bisection step"):  # a first round with thresholds of one's choosing
        check_lock({"spec": {"analysis": {**first, "thresholds": [59.9, 60.0]}}}, None)
    done = {**asked[-1]["lock"], "rounds": asked[-1]["lock"]["rounds"] + [
        {"n": int(pooled.size), "lower": [int((pooled <= t).sum()) for t in asked[-1]["spec"]["analysis"]["thresholds"]],
         "upper": [int((pooled <= t).sum()) for t in asked[-1]["spec"]["analysis"]["thresholds"]]}]}
    with pytest.raises(Refusal, match="no further round"):  # the brackets closed: nothing more to ask
        check_lock({"spec": {"analysis": first}, "lock": done}, None)


def test_the_administrator_sees_and_can_drop_the_peer_pins(sqlite_cdm, tmp_path):
    import json

    from click.testing import CliRunner

    from cdm import secagg
    from cdm.wire import Signer, generate_key, key_fingerprint, public_key_text
    from node.cli import main
    from node.execute import run_request
    from node.secure import describe
    from survival_sites import write_persons

    config = _node(tmp_path)
    mine = describe(config)["secagg"]["certificate"]
    signing = {s: generate_key() for s in ("site-b", "site-c")}
    write_persons(sqlite_cdm, pd.DataFrame({"person_id": range(1, 9), "yob": 1950, "time": 30.0, "event": 1}))
    spec = {"cohort": {"index": {"kind": "condition", "codes": ["SNOMED:443487006"]}}, "analysis": {"type": "count"}}

    def ask(keys, session):
        peers = {s: secagg.certify(Signer(s, k), secagg.generate_key()) for s, k in keys.items()}
        return run_request(sqlite_cdm, config, {"request_id": session, "requester": "r", "spec": spec,
                                                "secure": {"protocol": secagg.PROTOCOL, "session": session,
                                                           "peers": {"site-a": mine, **peers}}})

    def cli(*args):
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "node.toml"), "secure", *args])
        return result

    assert ask(signing, "j/round-1/attempt-1")["status"] == "ok"
    listed = json.loads(cli("peers", "--json").output)
    assert {r["site"]: r["fingerprint"] for r in listed} == {s: key_fingerprint(public_key_text(k))
                                                             for s, k in signing.items()}
    assert {r["source"] for r in listed} == {"first use"}
    rotated = {**signing, "site-b": generate_key()}  # site-b's key rotated: refused until the pin is dropped
    assert ask(rotated, "j/round-2/attempt-1")["code"] == "SECURE_PEERS"
    assert cli("forget", "site-b").exit_code == 0 and cli("forget", "site-z").exit_code == 2
    assert ask(rotated, "j/round-3/attempt-1")["status"] == "ok"
    listed = json.loads(cli("peers", "--json").output)
    assert {r["site"]: r["fingerprint"] for r in listed}["site-b"] == key_fingerprint(public_key_text(rotated["site-b"]))
