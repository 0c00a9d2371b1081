"""Prefect flows over the homogen library and the model package (Dask fan-out for generation).

Flows: ``generate-dataset`` (:mod:`flows.generate`), ``validate-dataset`` (:mod:`flows.validate`),
``train-model`` (:mod:`flows.train`) and the parent ``generate-and-train``
(:mod:`flows.generate_and_train`). Parameters: :mod:`flows.config`. Tasks: :mod:`flows.tasks`
(dataset; imported by Dask workers, so no torch) and :mod:`flows.model_tasks` (training).

Import the submodules directly; this package imports nothing, so a Dask worker that unpickles a
shard task loads only :mod:`flows.tasks`.
"""
