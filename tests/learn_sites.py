"""Synthetic site CDMs for the federated-learning tests (SQLAlchemy Core inserts, fixed seeds).

* :func:`logistic_site`: persons with two measurements (``RADFED:feat_a``/``feat_b``) and a 0/1
  condition (``RADFED:target_x``) drawn from a known logistic model, shifted per site (non-IID).
* :func:`rare_site`: rare-disease patients planted exactly as ``node.synth.cohorts.rare_disease``
  does: one disease of :data:`node.synth.rare.DISEASES` (local ``synth-diagnosis`` code), each profile
  phenotype with its frequency (at least the most frequent one), plus background noise phenotypes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from cdm.db import create_cdm, open_engine
from cdm.schema import tables as T
from cdm.vocabulary import Vocabulary, vocabulary_for_uri
from node.synth import codes as C
from node.synth import rare

BETA = np.array([-0.5, 1.0, -0.8])
DIAGNOSIS_VOCAB = vocabulary_for_uri(C.SYNTH_DIAGNOSIS)
TYPE = 32817  # EHR


def _person(conn, pid: int) -> None:
    conn.execute(insert(T["person"]).values(person_id=pid, gender_concept_id=8507, year_of_birth=1970,
                                            race_concept_id=0, ethnicity_concept_id=0))
    conn.execute(insert(T["observation_period"]).values(
        observation_period_id=pid, person_id=pid, observation_period_start_date=dt.date(2020, 1, 1),
        observation_period_end_date=dt.date(2024, 1, 1), period_type_concept_id=TYPE))


def _condition(conn, row_id: int, pid: int, concept_id: int, day: dt.date) -> None:
    conn.execute(insert(T["condition_occurrence"]).values(
        condition_occurrence_id=row_id, person_id=pid, condition_concept_id=concept_id,
        condition_start_date=day, condition_type_concept_id=TYPE))


def write_node_toml(folder: Path, name: str, db: Path, allowed: list[str], extra: str = "") -> Path:
    path = folder / "node.toml"
    allowed_toml = ", ".join(f'"{a}"' for a in allowed)
    path.write_text(f'[site]\nname = "{name}"\ndata_dir = "data"\n\n[database]\nurl = "{db}"\n\n'
                    f"[policy]\nmin_rows_model = 20\n\n[learning]\nallowed_features = [{allowed_toml}]\n{extra}")
    return path


def logistic_site(folder: Path, name: str, n: int, shift: float, seed: int, extra_toml: str = "") -> Path:
    """A site CDM + node.toml; returns the node.toml path."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "cdm.sqlite"
    engine = open_engine(db)
    create_cdm(engine, source_name=name)
    vocab = Vocabulary(engine)
    feat_a = vocab.concept_for("RADFED", "feat_a", "feature a", "Measurement").concept_id
    feat_b = vocab.concept_for("RADFED", "feat_b", "feature b", "Measurement").concept_id
    target = vocab.concept_for("RADFED", "target_x", "target", "Condition").concept_id
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) + shift
    y = rng.random(n) < 1 / (1 + np.exp(-(BETA[0] + X @ BETA[1:])))
    with engine.begin() as conn:
        for i in range(n):
            pid = seed * 100_000 + i + 1
            _person(conn, pid)
            for j, concept in enumerate((feat_a, feat_b)):
                conn.execute(insert(T["measurement"]).values(
                    measurement_id=pid * 10 + j, person_id=pid, measurement_concept_id=concept,
                    measurement_date=dt.date(2020, 2, 1), measurement_type_concept_id=TYPE,
                    value_as_number=float(X[i, j])))
            if y[i]:
                _condition(conn, pid * 10, pid, target, dt.date(2020, 3, 1))
    engine.dispose()
    return write_node_toml(folder, name, db, ["measurement:RADFED:*", "condition:RADFED:*"], extra_toml)


def logistic_spec(strategy: str = "newton", rounds: int = 6, **training) -> dict:
    return {"name": "feat_logit",
            "variables": {"a": {"kind": "measurement", "code": "RADFED:feat_a", "window": {}},
                          "b": {"kind": "measurement", "code": "RADFED:feat_b", "window": {}},
                          "t": {"kind": "condition", "codes": ["RADFED:target_x"]}},
            "features": ["a", "b"], "target": "t", "model": {"type": "logistic"},
            "training": {"strategy": strategy, "rounds": rounds, **training}}


def rare_site(folder: Path, name: str, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "cdm.sqlite"
    engine = open_engine(db)
    create_cdm(engine, source_name=name)
    vocab = Vocabulary(engine)
    hpo = {hp: vocab.concept_for("HPO", hp, label, "Condition").concept_id for hp, label in rare.HP.items()}
    disease = {code: vocab.concept_for(DIAGNOSIS_VOCAB, code, dname, "Condition").concept_id
               for code, dname, _, _ in rare.DISEASES}
    rng = np.random.default_rng(seed)
    with engine.begin() as conn:
        for i in range(n):
            pid = seed * 100_000 + i + 1
            _person(conn, pid)
            code, _, _, profile = rare.DISEASES[int(rng.integers(0, len(rare.DISEASES)))]
            day = dt.date(2022, 1, 1)
            _condition(conn, pid * 100, pid, disease[code], day)
            present = [hp for hp, freq in profile if rng.random() < freq]
            if not present:
                present = [max(profile, key=lambda x: x[1])[0]]
            present += [hp for hp in rare.NOISE if hp not in present and rng.random() < rare.NOISE_RATE]
            for k, hp in enumerate(present):
                _condition(conn, pid * 100 + 1 + k, pid, hpo[hp], day - dt.timedelta(days=int(rng.integers(30, 900))))
    engine.dispose()
    return write_node_toml(folder, name, db, ["condition:HPO:*", f"condition:{DIAGNOSIS_VOCAB}:RD*"],
                           "rows_per_parameter = 1\n")


def rare_spec(held_out: list[str], rounds: int = 30, **training) -> dict:
    """Features: every HPO term of the catalogue; target: the diagnosis; descriptions from rare.py."""
    hp_names = {f"hp_{hp[3:]}": hp for hp in rare.HP}
    variables = {name: {"kind": "condition", "codes": [f"HPO:{hp}"]} for name, hp in hp_names.items()}
    variables["disease"] = {"kind": "condition", "codes": {code: f"{DIAGNOSIS_VOCAB}:{code}" for code, *_ in rare.DISEASES}}
    return {"name": "rare_zero_shot", "variables": variables, "features": list(hp_names), "target": "disease",
            "model": {"type": "patient_encoder", "hidden": [128]},
            "training": {"strategy": "fedavg", "rounds": rounds, "local_epochs": 5, "learning_rate": 0.005,
                         "temperature": 0.05, **training},
            "zero_shot": {"descriptions": {code: text for code, _, text, _ in rare.DISEASES}, "held_out": held_out,
                          "feature_text": {name: rare.HP[hp] for name, hp in hp_names.items()}}}
