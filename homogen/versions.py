"""Dataset versions: a short content id of everything that decides a dataset's bytes.

Equal inputs give equal versions; any change of the recipe's parameters, of the image list or of
the generator gives a new one. Where the data is written (path, format, shard and chunk sizes) is
not part of it: those change the storage, not the dataset.
"""

from __future__ import annotations

import hashlib
import json

from homogen.config import GenerateConfig
from homogen.schema import SCHEMA_VERSION

GENERATOR_VERSION = "1.0"
"""Bump when the pixels or labels produced for a given config change."""



def dataset_version(config: GenerateConfig, source_digest: str) -> str:
    """12 hex characters identifying the dataset that ``config`` makes from the listed images."""
    src = config.source
    payload = {
        "sampling": config.sampling.model_dump(mode="json"),
        "split": {
            "train_split": src.train_split,
            "test_split": src.test_split,
            "test_fraction": src.test_fraction,
        },
        "source_digest": source_digest,
        "generator": GENERATOR_VERSION,
        "schema": SCHEMA_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
