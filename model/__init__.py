"""HomographyNet training on homogen stores (torch; never imports Prefect).

Import the submodules directly: ``homogen.model.network``, ``homogen.model.data``, ``homogen.model.train``.
"""
