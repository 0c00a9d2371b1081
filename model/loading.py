"""One ``load_model(uri)``: a trained HomographyNet from wherever it was kept.

Accepted: a checkpoint file written by the trainer (``best.pt``, ``last.pt``), a local MLflow
model folder, ``models:/homographynet@champion`` / ``models:/NAME/VERSION`` / ``models:/MODEL_ID``,
or a run URI ``runs:/RUN_ID[/model]``. Nothing is unpickled beyond tensors and plain containers
(checkpoints: ``torch.load(weights_only=True)``; MLflow models: :mod:`homogen.model.mlflow_model`).
"""

from __future__ import annotations

import os
import tempfile

from homogen.redaction import redact

__all__ = ["load_model"]


def load_model(uri: str | os.PathLike, tracking_uri: str | None = None, map_location: str = "cpu"):
    """The HomographyNet at ``uri`` (see the module docstring), in eval mode on ``map_location``.

    MLflow URIs are resolved against :func:`homogen.model.tracking.resolve_tracking_uri`
    (``tracking_uri`` argument first).

    Raises:
        homogen.model.train.CheckpointError: a checkpoint file that is corrupt or not the trainer's.
        ValueError: a folder that is not a homogen MLflow model, or a string that is neither a file
            nor an MLflow URI.
        TrackingError: an MLflow URI that cannot be resolved or downloaded (message without credentials).
    """
    from homogen.model.mlflow_model import read_network_folder
    from homogen.model.tracking import TrackingError, resolve_tracking_uri, setup_tracking

    uri = os.fspath(uri)
    if os.path.isfile(uri):
        from homogen.model.train import load_checkpoint, network_from_checkpoint

        return network_from_checkpoint(load_checkpoint(uri)).to(map_location)
    if os.path.isdir(uri):
        return read_network_folder(uri, map_location)
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        uri = uri.rstrip("/") + "/model"
    if not uri.startswith(("models:/", "runs:/")) and "://" not in uri:
        raise ValueError(
            f"no checkpoint file or model folder {uri!r}, and it is not an MLflow URI (models:/NAME@ALIAS, runs:/RUN_ID)"
        )
    import mlflow.artifacts

    setup_tracking(tracking_uri, experiment=None)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; say which URI and store
            raise TrackingError(
                f"cannot load model {redact(uri)} from {redact(resolve_tracking_uri(tracking_uri))}: {redact(str(exc))[:300]}"
            ) from exc
        return read_network_folder(folder, map_location)
