"""Trained models in the coordinator's store, with their provenance.

One table, ``coord_model``, on the coordinator store's engine, declared in that store's ``MetaData``
(:data:`coordinator.store.metadata`: one database, one schema) and created on first use.  A row holds
the model's parameters (``.npz`` bytes), the canonical model spec and its digest, the Flower run id and
FAB hash, the strategy and rounds, per-site and pooled evaluation, the radfed and Flower versions, and
when it finished; :meth:`ModelStore.get` gives all of it back.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid

import numpy as np
from sqlalchemy import JSON, Column, DateTime, LargeBinary, String, Table, insert, select

from coordinator.store import metadata

models = Table("coord_model", metadata,
               Column("model_id", String(36), primary_key=True),
               Column("name", String(64), nullable=False),
               Column("spec_digest", String(64), nullable=False),
               Column("spec", JSON, nullable=False),
               Column("created_at", DateTime, nullable=False),
               Column("flower_run_id", String(32)),
               Column("fab_hash", String(64)),
               Column("parameters", LargeBinary, nullable=False),
               Column("result", JSON, nullable=False),      # train loss per round, per-site / pooled evaluation
               Column("provenance", JSON, nullable=False))  # versions, requester, strategy, sites


def arrays_to_bytes(arrays: list[np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, *arrays)
    return out.getvalue()


def arrays_from_bytes(blob: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


class ModelStore:
    def __init__(self, engine):
        self.engine = engine
        models.create(engine, checkfirst=True)

    def add(self, *, name: str, spec: dict, spec_digest: str, arrays: list[np.ndarray], result: dict,
            provenance: dict, flower_run_id: str | None = None, fab_hash: str | None = None) -> str:
        model_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(models).values(
                model_id=model_id, name=name, spec_digest=spec_digest, spec=spec,
                created_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                flower_run_id=flower_run_id, fab_hash=fab_hash, parameters=arrays_to_bytes(arrays),
                result=result, provenance=provenance))
        return model_id

    def get(self, model_id: str) -> dict | None:
        """The stored model with its parameters decoded into ``arrays``; None when there is no such model."""
        with self.engine.connect() as conn:
            row = conn.execute(select(models).where(models.c.model_id == model_id)).mappings().first()
        if row is None:
            return None
        return {name: value for name, value in row.items() if name != "parameters"} | {
            "arrays": arrays_from_bytes(row["parameters"])}

    def list(self) -> list[dict]:
        cols = [models.c.model_id, models.c.name, models.c.spec_digest, models.c.created_at, models.c.flower_run_id]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(*cols).order_by(models.c.created_at)).mappings()]
