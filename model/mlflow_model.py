"""The logged model's format: a ``torch.export`` program (MLflow's ``pt2``), written and read here.

Written by :func:`log_network` with ``mlflow.pytorch.log_model(..., serialization_format="pt2")``:
the network is exported on CPU in eval mode with a dynamic batch dimension (the input example
holds two pairs, so the exporter keeps the batch free), with

- a signature: input uint8 :math:`(-1, 2, P, P)` (channel 0 = patch A, 1 = B), output float32
  :math:`(-1, 8)` offsets in pixels, label order of CONVENTIONS.md;
- an input example (two real test pairs);
- metadata ``patch_size``, ``width``, ``rho``, ``dataset_version``;
- ``pip_requirements`` of torch and numpy only: the graph needs no homogen code.

So MLflow's own loaders read it anywhere, without this package:
``mlflow.pyfunc.load_model("models:/homographynet@champion").predict(pairs_uint8)`` returns the
``(N, 8)`` offsets, and ``mlflow models serve`` serves it. The archive holds the graph as JSON and
the weights as raw bytes: no pickled code (the pickle format MLflow warns about is not used).

Read by :func:`read_network_folder` (homogen's loader, :func:`homogen.model.loading.load_model`):
it rebuilds a :class:`~homogen.model.network.HomographyNet` from the metadata and loads the
archive's weights after checking that none of them is stored pickled, without calling
``torch.export.load`` (which falls back to full unpickling for some entries): a tampered archive is
refused, not run.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

import numpy as np

__all__ = ["MODEL_FILE", "log_network", "read_network_folder", "signature"]

MODEL_FILE = os.path.join("data", "model.pt2")
"""The archive inside an MLflow model folder (MLflow's pytorch flavour, pt2 format)."""


def signature(patch_size: int):
    """The model's MLflow signature: uint8 (-1, 2, P, P) in, float32 (-1, 8) out.

    The tensors are unnamed: a named input makes pyfunc pass a dict, which the pytorch flavour refuses.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    p = int(patch_size)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 2, p, p))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 8))]),
    )


def log_network(
    model: Any,
    example: np.ndarray,
    metadata: Mapping[str, Any],
    *,
    model_id: str | None = None,
    name: str = "model",
):
    """Log ``model`` (uint8 :math:`(B, 2, P, P)` -> :math:`(B, 8)`) as an MLflow pt2 model; returns MLflow's ``ModelInfo``.

    Args:
        model: the trained network (any device; a CPU copy in eval mode is exported).
        example: uint8 :math:`(n, 2, P, P)` real pairs, ``n >= 2`` (a batch of one would fix the
            batch size of the exported graph to 1).
        metadata: ``patch_size``, ``width``, ``rho``, ``dataset_version`` (stored in the MLmodel file).
        model_id: an MLflow LoggedModel created when training started (its metrics link to it).

    Raises:
        ValueError: ``example`` is not uint8 with at least two pairs of the model's patch size.
    """
    import mlflow.pytorch
    import torch

    example = np.ascontiguousarray(example)
    p = int(metadata["patch_size"])
    if example.dtype != np.uint8 or example.ndim != 4 or example.shape[1:] != (2, p, p) or len(example) < 2:
        raise ValueError(f"input example must be uint8 (n>=2, 2, {p}, {p}); got {example.dtype} {example.shape}")
    cpu = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    return mlflow.pytorch.log_model(
        cpu,
        name=name,
        signature=signature(p),
        input_example=example,
        metadata=dict(metadata),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        serialization_format="pt2",
        model_id=model_id,
    )


def _metadata(folder: str) -> dict[str, Any]:
    import yaml

    mlmodel = os.path.join(folder, "MLmodel")
    with open(mlmodel) as f:
        spec = yaml.safe_load(f) or {}
    return dict(spec.get("metadata") or {})


def read_network_folder(folder: str | os.PathLike, map_location: str = "cpu"):
    """The :class:`HomographyNet` of a local MLflow model folder written by :func:`log_network` (eval mode).

    Raises:
        ValueError: no ``MLmodel``/``data/model.pt2``, metadata without ``patch_size``/``width``,
            weights stored pickled (refused: they could run code), or weights that do not fit.
    """
    from torch.export.pt2_archive import _package as pt2

    from homogen.model.network import HomographyNet

    folder = os.fspath(folder)
    archive = os.path.join(folder, MODEL_FILE)
    if not os.path.isfile(os.path.join(folder, "MLmodel")) or not os.path.isfile(archive):
        raise ValueError(
            f"{folder} is not a HomographyNet MLflow model (no MLmodel or {MODEL_FILE}): log it with homogen"
        )
    meta = _metadata(folder)
    if "patch_size" not in meta or "width" not in meta:
        raise ValueError(f"{folder}/MLmodel has no patch_size/width metadata: it was not logged by homogen")
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
