"""A catalogue of rare diseases with free-text descriptions and phenotype profiles (HPO).

For zero-shot evaluation (issue 9): a model sees the ``description`` of a disease it was never
trained on and must rank it for a patient whose record holds only phenotypes.  Each patient gets
each profile phenotype with its frequency, plus background noise phenotypes.  Diseases are coded in
the local ``synth-diagnosis`` system (``RD01``..``RD20``); the descriptions are written for this
generator, paraphrasing textbook presentations.

The catalogue itself is data, ``rare_diseases.json`` beside this module: the HPO labels and one
record per disease (code, name, description, phenotype profile).
"""

from __future__ import annotations

import json
from importlib import resources

_CATALOGUE = json.loads(resources.files(__package__).joinpath("rare_diseases.json").read_text(encoding="utf-8"))

#: HPO id -> the term's label (Human Phenotype Ontology), for every phenotype the profiles and the noise use.
HP: dict[str, str] = _CATALOGUE["hpo"]

#: (code, name, description, [(HPO id, frequency)])
DISEASES: list[tuple[str, str, str, list[tuple[str, float]]]] = [
    (d["code"], d["name"], d["description"], [(hp, frequency) for hp, frequency in d["phenotypes"]])
    for d in _CATALOGUE["diseases"]]

#: Background phenotypes any patient may carry (noise for the zero-shot task).
NOISE = ["HP:0012378", "HP:0002315", "HP:0000822", "HP:0002014", "HP:0001903", "HP:0000821"]
NOISE_RATE = 0.08
