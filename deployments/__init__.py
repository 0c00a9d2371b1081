"""Deployments of the homogen flows.

- :mod:`homogen.deployments.definitions`: the deployment objects (``generate-and-train/local``,
  ``generate-and-train/regenerate``, ``train-model/gpu``), built without a server.
- :mod:`homogen.deployments.serve`: ``python -m homogen.deployments.serve`` serves the two ``generate-and-train``
  deployments from one process (and runs their schedules).
- :mod:`homogen.deployments.gpu`: ``python -m homogen.deployments.gpu --pool gpu`` registers ``train-model/gpu`` on a
  work pool whose worker runs on a GPU machine.
"""
