"""The logged model's format: a ``torch.export`` program (pt2) behind a checked pyfunc, written and read here.

Written by :func:`log_network`: the network is exported on CPU in eval mode with a dynamic batch
dimension (``torch.export.export``, saved with ``torch.export.save``), its SHA-256 computed, and
logged with ``mlflow.pyfunc.log_model`` as "models from code" (:mod:`homogen.model.mlflow_pyfunc`,
which imports no homogen) with the archive as the artifact ``model``, and

- a signature: input uint8 :math:`(-1, 2, P, P)` (channel 0 = patch A, 1 = B), output float32
  :math:`(-1, 8)` offsets in pixels, label order of CONVENTIONS.md;
- an input example (two real test pairs);
- metadata ``patch_size``, ``width``, ``rho``, ``dataset_version``, ``test_mace`` and
  ``archive_sha256`` (also in the model config, where the pyfunc reads it);
- ``pip_requirements`` of torch, numpy and mlflow only: nothing of homogen is needed.

So MLflow's own loaders read it anywhere, without this package:
``mlflow.pyfunc.load_model("models:/homographynet@champion").predict(pairs_uint8)`` returns the
``(N, 8)`` offsets (in batches of 256 pairs: memory flat in N), and ``mlflow models serve`` serves
it. The archive holds the graph as JSON and the weights as raw bytes: no pickled code.

Both loaders check the archive before use (:func:`homogen.model.mlflow_pyfunc.verify_archive`:
every zip member's CRC-32 and the recorded SHA-256) and refuse a damaged one naming the file.
Homogen's loader, :func:`read_network_folder`, then rebuilds a
:class:`~homogen.model.network.HomographyNet` from the metadata and loads the archive's weights
after checking that none of them is stored pickled, without calling ``torch.export.load`` (which
falls back to full unpickling for some entries): a tampered archive is refused, not run.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

import numpy as np

__all__ = ["MODEL_FILE", "PREDICT_BATCH", "archive_path", "log_network", "read_network_folder", "signature"]

MODEL_FILE = os.path.join("artifacts", "model.pt2")
"""The archive inside an MLflow model folder written by :func:`log_network`."""
LEGACY_MODEL_FILE = os.path.join("data", "model.pt2")
"""Where models logged with MLflow's pytorch flavour (before archive digests) keep it; still read."""
PREDICT_BATCH = 256
"""Pairs per forward pass of the pyfunc's ``predict``."""


def signature(patch_size: int):
    """The model's MLflow signature: uint8 (-1, 2, P, P) in, float32 (-1, 8) out, enforced by the model.

    MLflow enforces a tensor signature by converting the input to its dtype first: ``mlflow models
    serve`` turns a JSON payload into ``numpy.array(data, dtype=uint8)``, so float pixels
    (``pixels / 255.0``) would be truncated to 0 and answered with HTTP 200. The signature is therefore
    marked as one MLflow leaves to the model (``_is_signature_from_type_hint``: the server hands the
    payload's ``inputs`` over as sent, and pyfunc skips its own conversion), and the model enforces
    it, dtype, range and shape, with an HTTP 400 naming the expected input
    (:func:`homogen.model.mlflow_pyfunc.checked_pairs`). That flag is MLflow's private attribute: no
    public option keeps a tensor signature without the cast (docs/BENCHMARKS.md, *Beneath an API*);
    tests/test_mlflow_model.py serves a model and fails if a later MLflow changes it.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    p = int(patch_size)
    sig = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 2, p, p))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 8))]),
    )
    sig._is_signature_from_type_hint = True  # the model enforces it, without MLflow's cast (docstring)
    return sig


def log_network(
    model: Any,
    example: np.ndarray,
    metadata: Mapping[str, Any],
    *,
    model_id: str | None = None,
    name: str = "model",
    batch_size: int = PREDICT_BATCH,
):
    """Log ``model`` (uint8 :math:`(B, 2, P, P)` -> :math:`(B, 8)`) as a checked pt2 pyfunc; returns a ``ModelInfo``.

    Args:
        model: the trained network (any device; a CPU copy in eval mode is exported).
        example: uint8 :math:`(n, 2, P, P)` real pairs, ``n >= 2`` (the input example).
        metadata: ``patch_size``, ``width``, ``rho``, ``dataset_version`` (stored in the MLmodel
            file, with ``archive_sha256`` added).
        model_id: an MLflow LoggedModel created when training started (its metrics link to it).
        batch_size: pairs per forward pass of the pyfunc's ``predict`` (``predict_batch_size`` in the
            model config; a loader may pass another).

    Raises:
        ValueError: ``example`` is not uint8 with at least two pairs of the model's patch size.
    """
    import tempfile

    import mlflow.pyfunc
    import torch

    from homogen.model import mlflow_pyfunc

    example = np.ascontiguousarray(example)
    p = int(metadata["patch_size"])
    if example.dtype != np.uint8 or example.ndim != 4 or example.shape[1:] != (2, p, p) or len(example) < 2:
        raise ValueError(f"input example must be uint8 (n>=2, 2, {p}, {p}); got {example.dtype} {example.shape}")
    cpu = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "model.pt2")
        program = torch.export.export(cpu, (torch.from_numpy(example),), dynamic_shapes=({0: batch},))
        torch.export.save(program, archive)
        digest = mlflow_pyfunc.file_sha256(archive)
        # MLflow logs model_config as params of the run, and overrides at load only keys logged here:
        # "predict_batch_size", since "batch_size" is the training's param (homogen.model.mlflow_pyfunc)
        config = {"archive_sha256": digest, "patch_size": p, "predict_batch_size": int(batch_size)}
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=mlflow_pyfunc.__file__,
            artifacts={mlflow_pyfunc.ARTIFACT: archive},
            model_config=config,
            signature=signature(p),
            input_example=example,
            metadata={**dict(metadata), "archive_sha256": digest},
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                "numpy",
                f"mlflow=={mlflow.__version__}",
            ],
            model_id=model_id,
        )


def archive_path(folder: str | os.PathLike) -> str:
    """The pt2 archive of an MLflow model folder (``artifacts/model.pt2``, or an older model's ``data/model.pt2``)."""
    folder = os.fspath(folder)
    for name in (MODEL_FILE, LEGACY_MODEL_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, MODEL_FILE)


def _metadata(folder: str) -> dict[str, Any]:
    import yaml

    mlmodel = os.path.join(folder, "MLmodel")
    with open(mlmodel) as f:
        spec = yaml.safe_load(f) or {}
    return dict(spec.get("metadata") or {})


def read_network_folder(folder: str | os.PathLike, map_location: str = "cpu"):
    """The :class:`HomographyNet` of a local MLflow model folder written by :func:`log_network` (eval mode).

    Raises:
        ValueError: no ``MLmodel``/archive, metadata without ``patch_size``/``width``, a damaged
            archive (bad CRC-32, or not the SHA-256 recorded when it was logged), weights stored
            pickled (refused: they could run code), or weights that do not fit.
    """
    from torch.export.pt2_archive import _package as pt2

    from homogen.model.mlflow_pyfunc import verify_archive
    from homogen.model.network import HomographyNet

    folder = os.fspath(folder)
    archive = archive_path(folder)
    if not os.path.isfile(os.path.join(folder, "MLmodel")) or not os.path.isfile(archive):
        raise ValueError(
            f"{folder} is not a HomographyNet MLflow model (no MLmodel or {MODEL_FILE}): log it with homogen"
        )
    meta = _metadata(folder)
    if "patch_size" not in meta or "width" not in meta:
        raise ValueError(f"{folder}/MLmodel has no patch_size/width metadata: it was not logged by homogen")
    verify_archive(archive, meta.get("archive_sha256"))  # before torch reads it: CRCs, then the logged digest
    try:
        with pt2.PT2ArchiveReader(archive) as reader:
            config = pt2._load_payload_config(reader, pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format("model"))
            pickled = sorted(k for k, m in config.config.items() if m.use_pickle)
            if pickled:
                raise ValueError(
                    f"{archive} stores weights {pickled[:3]} pickled, which could run code when loaded: refused"
                )
            state = pt2._load_state_dict(reader, "model")
    except ValueError:
        raise
    except Exception as exc:  # a damaged or foreign archive: torch raises RuntimeError, AssertionError, ...
        raise ValueError(f"{archive} is not a readable pt2 archive ({type(exc).__name__}: {exc})") from exc
    net = HomographyNet(width=float(meta["width"]), patch_size=int(meta["patch_size"]))
    try:
        net.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(
            f"{archive} does not hold the weights of {net.__class__.__name__}(width={meta['width']}, "
            f"patch_size={meta['patch_size']}): {str(exc).splitlines()[0]}"
        ) from exc
    return net.to(map_location).eval()
