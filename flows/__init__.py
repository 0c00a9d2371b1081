"""Prefect flows over the homogen library and the model package (Dask fan-out for generation).

Flows: ``generate-dataset`` (:mod:`homogen.flows.generate`), ``validate-dataset`` (:mod:`homogen.flows.validate`),
``train-model`` (:mod:`homogen.flows.train`) and the parent ``generate-and-train``
(:mod:`homogen.flows.generate_and_train`). Parameters: :mod:`homogen.flows.config`. Tasks: :mod:`homogen.flows.tasks`
(dataset) and :mod:`homogen.flows.model_tasks` (training). Shards run on Dask as plain Dask tasks:
:mod:`homogen.flows.shards` (no Prefect, no torch), under one Prefect task ``generate-shards``.

Import the submodules directly; this package imports nothing, so a Dask worker that unpickles a
shard loads only :mod:`homogen.flows.shards` and the library.
"""
