"""What a dataset version is made of and how two compare, from manifests alone (no torch, no MLflow).

- :mod:`homogen.lineage.libraries`: the versions of the code that made a store's bytes, recorded in
  its manifest; a partial store made with other pixel-deciding versions is not resumed.
- :mod:`homogen.lineage.array_digest`: one digest per stored array, computed at commit from the
  staged chunks and checked by ``validate``.
- :mod:`homogen.lineage.diff`: ``homogen diff A B``, what changed between two stores.

The questions that need the tracking store (which models saw a version) are answered by
``homogen.model.lineage``.
"""
