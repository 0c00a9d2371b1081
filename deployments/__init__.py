"""Deployments of the homogen flows.

- :mod:`deployments.definitions`: the deployment objects (``generate-and-train/local``,
  ``generate-and-train/regenerate``, ``train-model/gpu``), built without a server.
- :mod:`deployments.serve`: ``python -m deployments.serve`` serves the two ``generate-and-train``
  deployments from one process (and runs their schedules).
- :mod:`deployments.gpu`: ``python -m deployments.gpu --pool gpu`` registers ``train-model/gpu`` on a
  work pool whose worker runs on a GPU machine.
"""
