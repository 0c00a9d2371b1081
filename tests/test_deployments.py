"""The deployments, built without a server: names, schedules, per-schedule parameters, parameter schema."""

from __future__ import annotations

import pytest
from prefect.utilities.schema_tools import ValidationError as SchemaError
from prefect.utilities.schema_tools import validate

from homogen.deployments.definitions import (
    GPU_POOL,
    REGENERATE_CYCLE,
    gpu_deployment,
    local_deployment,
    regenerate_deployment,
    served_deployments,
)
from homogen.flows.config import PipelineConfig, apply_overrides
from homogen.flows.generate_and_train import generate_and_train


def full_name(d) -> str:
    return f"{d.flow_name}/{d.name}"


def schema(d) -> dict:
    """The parameter schema as the server receives it (and validates run parameters against)."""
    return d._parameter_openapi_schema.model_dump(exclude_unset=True)


def test_served_deployments_are_local_and_regenerate():
    assert [full_name(d) for d in served_deployments()] == ["generate-and-train/local", "generate-and-train/regenerate"]
    assert all(d.work_pool_name is None for d in served_deployments())  # served, not on a pool


def test_local_runs_on_demand_with_the_defaults():
    d = local_deployment()
    assert not d.schedules and d.parameters == {}
    assert d.entrypoint == "homogen.flows.generate_and_train.generate_and_train"  # importable from any directory


def test_regenerate_has_one_schedule_per_perturbation_range():
    d = regenerate_deployment()
    rhos = [s.parameters["rho"] for s in d.schedules]
    assert rhos == [rho for rho, _ in REGENERATE_CYCLE] == [16, 24, 32]
    assert [s.schedule.cron for s in d.schedules] == [cron for _, cron in REGENERATE_CYCLE]
    assert len({s.slug for s in d.schedules}) == 3
    assert all(s.active for s in d.schedules)
    for s in d.schedules:  # each schedule's parameters make a valid run with that rho
        params = {**d.parameters, **s.parameters}
        validate(params, schema(d), raise_on_error=True)
        assert apply_overrides(PipelineConfig(), **params).generate.sampling.rho == s.parameters["rho"]


def test_each_range_makes_its_own_dataset_version():
    from homogen.versions import SourceTable, dataset_version

    same_images = SourceTable((9,), ("train2017/000000000009.jpg",), ("train",), ("0" * 32,))
    versions = {
        dataset_version(apply_overrides(PipelineConfig(), rho=rho).generate, same_images) for rho, _ in REGENERATE_CYCLE
    }
    assert len(versions) == len(REGENERATE_CYCLE)


def test_gpu_training_deployment_targets_a_work_pool():
    d = gpu_deployment()
    assert full_name(d) == "train-model/gpu" and d.work_pool_name == GPU_POOL
    assert d.entrypoint == "homogen.flows.train.train_model"
    assert d.parameters["config"]["device"] == "cuda"
    validate(d.parameters | {"dataset": "s3://bucket/ds.zarr"}, schema(d), raise_on_error=True)
    assert gpu_deployment("a100").work_pool_name == "a100"


def test_the_server_refuses_a_badly_typed_parameter_by_name():
    params_schema = schema(local_deployment())
    with pytest.raises(SchemaError, match="rho"):
        validate({"rho": "big"}, params_schema, raise_on_error=True)
    with pytest.raises(SchemaError, match="rhoo"):
        validate({"config": {"generate": {"sampling": {"rhoo": 3}}}}, params_schema, raise_on_error=True)


def test_flow_parameters_validate_before_the_run():
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="rho"):
        generate_and_train.validate_parameters({"rho": "big"})
    ok = generate_and_train.validate_parameters({"rho": 24, "config": {"train": {"epochs": 1}}})
    assert ok["rho"] == 24 and ok["config"].train.epochs == 1 and ok["config"].generate.sampling.pairs_per_image == 32


def test_served_deployments_refuse_credentials_in_url_parameters():
    from homogen.redaction import redact

    for d in served_deployments():
        params_schema = schema(d)
        for params in (
            {"source": "https://reader:pw@images.example.com/coco"},
            {"output": "s3://AKIA:secret@bucket/ds.zarr"},
            {"config": {"generate": {"source": {"root": "gs://token@bucket/coco"}}}},
            {"config": {"generate": {"output": "https://host/ds.zarr?X-Amz-Signature=abc"}}},
            {"config": {"tracking": {"uri": "postgresql://u:p@db:5432/mlflow"}}},
        ):
            with pytest.raises(
                SchemaError, match="should not be valid under {.description.: .no credentials in a URL parameter"
            ):
                validate(params, params_schema, raise_on_error=True)
        for url in (
            "s3://bucket/coco",
            "/data/user@host/coco",
            "sqlite:///work/mlflow.db",
            "http://mlflow:5000",
            "C:\\data\\coco",
        ):
            assert redact(url) == url  # the schema and the flow's own check agree: what the scrubber keeps is accepted
            validate(
                {"source": url, "config": {"generate": {"output": url}, "tracking": {"uri": url}}},
                params_schema,
                raise_on_error=True,
            )
