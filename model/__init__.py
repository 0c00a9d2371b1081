"""HomographyNet training on homogen stores (torch; never imports Prefect).

Import the submodules directly: ``model.network``, ``model.data``, ``model.train``.
"""
