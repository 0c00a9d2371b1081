"""The logged model's pyfunc: the pt2 archive checked before use, then predicted in bounded batches.

MLflow logs this very file with the model ("models from code", :func:`homogen.model.mlflow_model.log_network`)
and runs it wherever the model is loaded, so it imports only numpy, torch and mlflow: never homogen.
``mlflow.pyfunc.load_model(uri)`` and ``mlflow models serve`` reach :class:`HomographyNetPyfunc`:

- ``load_context``: the archive (artifact ``model``, a ``torch.export`` program) is verified
  before torch reads a byte of it: every zip member's CRC-32, then the SHA-256 of the whole file
  against ``archive_sha256`` of the model config written when the model was logged. A damaged or
  altered archive is refused naming the file.
- ``predict``: uint8 :math:`(N, 2, P, P)` (MLflow enforces the signature first) to float32
  :math:`(N, 8)` offsets in pixels, ``batch_size`` pairs at a time (model config, default 256), so
  memory stays flat in N.
"""

from __future__ import annotations

import hashlib
import os
import zipfile

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

ARTIFACT = "model"
"""Name of the pt2 archive among the model's artifacts."""
DEFAULT_BATCH = 256


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_archive(path: str | os.PathLike, sha256: str | None) -> None:
    """Refuse a damaged archive: a zip member whose CRC-32 fails, or a file whose SHA-256 is not ``sha256``.

    ``sha256`` None (a model logged before digests were recorded) checks the CRCs only.

    Raises:
        ValueError: naming the file, the member or the two digests, and what to do.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"model archive {path} is not a readable zip ({exc}): re-log or re-download the model"
        ) from exc
    if bad is not None:
        raise ValueError(f"model archive {path} is damaged (bad CRC-32 in {bad}): re-log or re-download the model")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise ValueError(
                f"model archive {path} has SHA-256 {actual}, not the {sha256} recorded when it was logged: "
                f"it was altered; re-log or re-download the model"
            )


def checked_pairs(model_input, patch_size: int) -> np.ndarray:
    """``model_input`` as uint8 :math:`(N, 2, P, P)`, or an HTTP 400 naming the expected input.

    The signature (uint8 :math:`(-1, 2, P, P)`) is enforced here, not by MLflow (see
    :func:`homogen.model.mlflow_model.signature`): a uint8 array passes as it is; integers 0-255
    (a JSON payload) are converted; floats, out-of-range values, ragged or wrongly shaped input are
    refused. MLflow's own enforcement would first cast a JSON payload to uint8, truncating floats.
    """
    p = int(patch_size)
    expected = f"expected uint8 pairs of shape (N, 2, {p}, {p}) (patch A then B, integer pixel values 0-255)"

    def refuse(got: str):
        return mlflow.exceptions.MlflowException.invalid_parameter_value(f"{expected}; got {got}")

    try:
        x = np.asarray(model_input)
    except ValueError as exc:  # ragged nested lists
        raise refuse(f"an array numpy cannot build ({exc})") from None
    if x.ndim != 4 or x.shape[1:] != (2, p, p):
        raise refuse(f"shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iu":
        raise refuse(f"{x.dtype} values: send integers 0-255 (e.g. (pixels * 255).round() of [0, 1] floats)")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise refuse(f"values from {x.min()} to {x.max()}")
    return x.astype(np.uint8)


class HomographyNetPyfunc(PythonModel):
    """uint8 :math:`(N, 2, P, P)` -> float32 :math:`(N, 8)` offsets, by the verified pt2 program, in batches."""

    def load_context(self, context) -> None:
        import torch

        config = dict(context.model_config or {})
        path = context.artifacts[ARTIFACT]
        verify_archive(path, config.get("archive_sha256"))
        self.patch_size = int(config["patch_size"])
        # pairs per forward pass, load_model(..., model_config={"predict_batch_size": N}) to change it. Not
        # "batch_size": MLflow logs model_config as params of the run, where that is the training's
        # (models logged before the rename carry "batch_size").
        self.batch_size = int(config.get("predict_batch_size", config.get("batch_size", DEFAULT_BATCH)))
        self.module = torch.export.load(path).module()

    # np.ndarray: what MLflow hands over once it has enforced the logged tensor signature; a hint
    # MLflow infers no schema from (it validates by the signature), and it stops MLflow advising
    # "Add type hints to the `predict` method" on every load and log.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        x = checked_pairs(model_input, self.patch_size)
        out = np.empty((len(x), 8), np.float32)
        with torch.inference_mode():
            for s in range(0, len(x), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[s : s + self.batch_size]))
                out[s : s + len(batch)] = self.module(batch).float().numpy()
        return out


mlflow.models.set_model(HomographyNetPyfunc())  # how MLflow's "models from code" finds the model here
