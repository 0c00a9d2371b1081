"""Which models saw which dataset versions: the tracking store's answers, through MLflow's search APIs.

Every training run (:mod:`homogen.model.mlflow_run`) records the store it used as three MLflow
dataset inputs, ``homogen-<version>/train|val|test`` with digest = the dataset version and
context ``training``, ``validation``, ``evaluation``; its registered model version carries the tags
``dataset_version``, ``store_uri`` and ``test_mace.<version>`` for each dataset version it was
scored on (the champion rule scores a champion on a newer version's test pairs). So:

- :func:`dataset_lineage` (``homogen lineage VERSION``): ``search_runs`` by dataset digest, the
  model versions of those runs (``search_model_versions`` by run id), the versions scored on it
  (``search_model_versions`` by tag), and each registered model's champion (its aliases);
- :func:`model_lineage` (``homogen lineage models:/NAME/N`` or ``models:/NAME@ALIAS``): the model
  version's run and that run's dataset inputs: the versions it trained, validated and was tested
  on, and where each store lives;
- :func:`dataset_versions` (``homogen datasets``): every homogen dataset version any run used,
  newest first (by the first run that used it), with its recipe, pairs, store and models.

Nothing here writes to the tracking store; every search spans all active experiments.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from homogen.model.registry import CHAMPION
from homogen.redaction import redact

__all__ = [
    "DatasetLineage",
    "DatasetSummary",
    "LineageError",
    "ModelLineage",
    "dataset_lineage",
    "dataset_params",
    "dataset_versions",
    "model_lineage",
    "store_location",
]

PREFIX = "homogen-"
"""MLflow dataset names of homogen stores: ``homogen-<version>/<split>``."""

ROLES = {"training": "train", "validation": "val", "evaluation": "test"}
"""MLflow dataset context -> the split a run used it for."""

VERSION = re.compile(r"[0-9a-f]{12}")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))/?")


class LineageError(ValueError):
    """The question cannot be answered (no such model version, a malformed reference); says what to pass."""


def store_location(ds: Any) -> str:
    """Where a store lives, as the tracking store records it: an absolute path for a local store (a
    relative one would name another place from every other folder), else its URL without credentials."""
    from homogen.outputs import is_local, local_path

    uri = str(ds.uri)
    return os.path.abspath(local_path(uri)) if is_local(uri) else redact(uri)


def dataset_params(ds: Any) -> dict[str, Any]:
    """The recipe of a store as run params (``dataset.*``), so that ``homogen datasets`` can show
    it from the tracking store alone, without opening the store."""
    s = ds.sampling
    m = ds.manifest
    return {
        "dataset.image_size": f"{s['image_width']}x{s['image_height']}",
        "dataset.pairs_per_image": s["pairs_per_image"],
        "dataset.photometric": s["photometric"],
        "dataset.seed": s["seed"],
        "dataset.splits": json.dumps(m.get("splits", {}), sort_keys=True),
        "dataset.generator_version": m.get("generator_version"),
    }


# ------------------------------------------------------------------------------ records


@dataclass
class RunUse:
    """One run that used a dataset version, and what for."""

    run_id: str
    run_name: str | None
    experiment_id: str
    status: str
    start: str
    roles: list[str]
    store_uri: str | None
    test_mace: float | None
    models: list[str] = field(default_factory=list)


@dataclass
class VersionScore:
    """A registered model version with a test MACE on the dataset version."""

    model: str
    version: str
    test_mace: float | None
    trained_on: str | None
    champion: bool
    run_id: str | None


@dataclass
class DatasetLineage:
    """``homogen lineage VERSION``: the runs that used it and the model versions scored on it."""

    version: str
    runs: list[RunUse]
    models: list[VersionScore]
    champions: dict[str, str]

    @property
    def found(self) -> bool:
        return bool(self.runs or self.models)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        if not self.found:
            return f"dataset {self.version}: no run in this tracking store used it"
        stores = sorted({r.store_uri for r in self.runs if r.store_uri})
        lines = [f"dataset {self.version}" + (f"  store {', '.join(stores)}" if stores else "")]
        lines.append(f"runs ({len(self.runs)}, newest first):")
        for r in self.runs:
            mace = f"test MACE {r.test_mace:.3f}" if r.test_mace is not None else "no test MACE"
            models = f"  -> {', '.join(r.models)}" if r.models else ""
            lines.append(
                f"  {r.start}  run {r.run_id[:12]} {r.run_name or ''}  {r.status}  {'+'.join(r.roles)}  {mace}{models}"
            )
        if self.models:
            lines.append("model versions with a test MACE on it (lowest first):")
            for m in self.models:
                mace = f"{m.test_mace:.3f}" if m.test_mace is not None else "-"
                trained = "it" if m.trained_on == self.version else (m.trained_on or "?")
                lines.append(
                    f"  {m.model} v{m.version}  test MACE {mace}  trained on {trained}"
                    + ("  (champion)" if m.champion else "")
                )
        for name in sorted({m.model for m in self.models} | set(self.champions)):
            version = self.champions.get(name)
            lines.append(
                f"champion of {name}: v{version}" if version else f"{name} has no champion (no version has the alias)"
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The same answer as a Markdown artifact: the models trained and tested on the version."""
        lines = [f"# Models on dataset `{self.version}`", ""]
        if not self.found:
            return "\n".join(lines + ["No run in the tracking store used this dataset version yet."])
        lines += ["| model version | trained on | test MACE here (px) | champion |", "|---|---|---|---|"]
        for m in self.models:
            mace = f"{m.test_mace:.3f}" if m.test_mace is not None else "-"
            trained = "this version" if m.trained_on == self.version else f"`{m.trained_on}`"
            lines.append(f"| `models:/{m.model}/{m.version}` | {trained} | {mace} | {'yes' if m.champion else ''} |")
        lines += ["", "| run | started (UTC) | used for | status |", "|---|---|---|---|"]
        for r in self.runs:
            lines.append(f"| `{r.run_id}` {r.run_name or ''} | {r.start} | {', '.join(r.roles)} | {r.status} |")
        lines += ["", f"`homogen lineage {self.version}` prints this from the tracking store."]
        return "\n".join(lines)


@dataclass
class DatasetRole:
    """One dataset input of a model version's run."""

    role: str
    version: str
    name: str
    store_uri: str | None


@dataclass
class ModelLineage:
    """``homogen lineage models:/NAME/N``: the dataset versions a model version saw."""

    model: str
    version: str
    aliases: list[str]
    run_id: str | None
    source: str | None
    datasets: list[DatasetRole]
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        alias = f" ({', '.join(self.aliases)})" if self.aliases else ""
        lines = [f"model {self.model} v{self.version}{alias}  run {self.run_id}  {self.source or ''}".rstrip()]
        if not self.datasets:
            lines.append("  its run recorded no homogen dataset")
        for d in self.datasets:
            lines.append(f"  {d.role:<5}  dataset {d.version}  {d.name}  store {d.store_uri or '?'}")
        if self.scores:
            lines.append(
                "  test MACE by dataset version: " + ", ".join(f"{v} {m:.3f}" for v, m in sorted(self.scores.items()))
            )
        return "\n".join(lines)


@dataclass
class DatasetSummary:
    """One line of ``homogen datasets``."""

    version: str
    first_used: str
    last_used: str
    pairs: int | None
    recipe: str
    stores: list[str]
    runs: int
    models: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_datasets(rows: list[DatasetSummary]) -> str:
    """``homogen datasets`` as a table, newest first."""
    if not rows:
        return "no homogen dataset version in this tracking store (train on a store to record one)"
    head = ("version", "first used (UTC)", "pairs", "recipe", "runs", "models", "store")
    table = [
        (r.version, r.first_used, str(r.pairs if r.pairs is not None else "?"), r.recipe, str(r.runs))
        + (", ".join(r.models) or "-", ", ".join(r.stores) or "?")
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in [head, *table]
    )


# ------------------------------------------------------------------------------ queries


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from homogen.model.tracking import resolve_tracking_uri, setup_tracking

    uri = resolve_tracking_uri(tracking_uri)
    db = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else None
    if db and db != ":memory:" and not os.path.isfile(db):  # a question must not create an empty store
        raise LineageError(
            f"no MLflow tracking store at {redact(uri)}: pass --tracking-uri or set MLFLOW_TRACKING_URI to the "
            f"store the runs were logged to"
        )
    uri = setup_tracking(uri, experiment=None)  # TrackingError names an unreachable store
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiments(client) -> list[str]:
    from mlflow.entities import ViewType

    ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _search_runs(client, filter_string: str) -> list:
    ids = _experiments(client)
    if not ids:
        return []
    out, token = [], None
    while True:
        page = client.search_runs(
            ids,
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        out += list(page)
        token = page.token
        if not token:
            return out


def _search_versions(client, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _store_uri(dataset_input) -> str | None:
    import mlflow.data

    try:
        src = mlflow.data.get_source(dataset_input).to_dict()
    except Exception:  # noqa: BLE001 - a source type this MLflow cannot rebuild: no store to name
        return None
    uri = src.get("uri") or src.get("url")
    return redact(str(uri)) if uri else None


def _homogen_inputs(run) -> list[tuple[str, str, str, Any]]:
    """``(version, role, dataset name, input)`` of each homogen dataset input of ``run``."""
    out = []
    for di in run.inputs.dataset_inputs if run.inputs else []:
        name = di.dataset.name or ""
        if not name.startswith(PREFIX):
            continue
        context = next((t.value for t in di.tags if t.key == "mlflow.data.context"), None)
        out.append((di.dataset.digest, ROLES.get(context, context or "?"), name, di))
    return out


def _champions(client, names: set[str]) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    out = {}
    for name in sorted(names):
        try:
            version = client.get_registered_model(name).aliases.get(CHAMPION)
        except MlflowException:
            continue
        if version is not None:
            out[name] = str(version)
    return out


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _versions_of_runs(client, run_ids: list[str]) -> list:
    out = []
    for i in range(0, len(run_ids), 100):
        out += _search_versions(client, f"run_id IN ({', '.join(_quote(r) for r in run_ids[i : i + 100])})")
    return out


def dataset_version_of(ref: str) -> str:
    """A dataset version from ``ref``: 12 hex characters as they are, else a store (path or URL) opened for its version.

    Raises:
        LineageError: neither (names it and what to pass).
    """
    if VERSION.fullmatch(ref):
        return ref
    from homogen.stores import StoreError, open_dataset

    try:
        with open_dataset(ref, check_chunks=False) as ds:
            return ds.version
    except StoreError as exc:
        raise LineageError(
            f"{redact(ref)} is neither a dataset version (12 hex characters), a model (models:/NAME/N or "
            f"models:/NAME@ALIAS) nor a store ({exc})"
        ) from None


def dataset_lineage(version: str, tracking_uri: str | None = None) -> DatasetLineage:
    """The runs that trained, validated or tested on ``version``, and the model versions scored on it."""
    if not VERSION.fullmatch(version):
        raise LineageError(f"{version!r} is not a dataset version (12 hex characters, as `homogen info STORE` prints)")
    client = _client(tracking_uri)
    runs = _search_runs(client, f"dataset.digest = {_quote(version)}")
    uses = []
    for r in runs:
        mine = [x for x in _homogen_inputs(r) if x[0] == version]
        if not mine:
            continue
        roles = [role for role in ("train", "val", "test") if any(x[1] == role for x in mine)]
        roles += sorted({x[1] for x in mine} - set(roles))
        uses.append(
            RunUse(
                run_id=r.info.run_id,
                run_name=r.info.run_name,
                experiment_id=r.info.experiment_id,
                status=r.info.status,
                start=_when(r.info.start_time),
                roles=roles,
                store_uri=_store_uri(mine[0][3]),
                test_mace=r.data.metrics.get("test_mace") if "test" in roles else None,
            )
        )
    by_run = {u.run_id: u for u in uses}
    versions = _versions_of_runs(client, list(by_run))
    scored = _search_versions(client, f"tags.`test_mace.{version}` LIKE '%'")
    champions = _champions(client, {v.name for v in versions} | {v.name for v in scored})
    for v in sorted(versions, key=lambda v: (v.name, int(v.version))):
        tag = " (champion)" if champions.get(v.name) == str(v.version) else ""
        by_run[v.run_id].models.append(f"{v.name} v{v.version}{tag}")
    models = {}
    for v in [*versions, *scored]:
        trained_run = by_run.get(v.run_id)
        trained_on = version if trained_run and "train" in trained_run.roles else v.tags.get("dataset_version")
        mace = v.tags.get(f"test_mace.{version}")
        models[(v.name, str(v.version))] = VersionScore(
            model=v.name,
            version=str(v.version),
            test_mace=float(mace) if mace is not None else None,
            trained_on=trained_on,
            champion=champions.get(v.name) == str(v.version),
            run_id=v.run_id,
        )
    ranked = sorted(models.values(), key=lambda m: (m.test_mace is None, m.test_mace or 0.0, m.model, int(m.version)))
    return DatasetLineage(version, uses, ranked, champions)


def model_lineage(model_uri: str, tracking_uri: str | None = None) -> ModelLineage:
    """The dataset versions the model version at ``models:/NAME/N`` or ``models:/NAME@ALIAS`` saw.

    Raises:
        LineageError: a malformed URI, or no such model, version or alias (names it).
    """
    from mlflow.exceptions import MlflowException

    m = MODEL_URI.fullmatch(model_uri)
    if not m:
        raise LineageError(f"{model_uri!r} is not a model version: pass models:/NAME/N or models:/NAME@ALIAS")
    client = _client(tracking_uri)
    name = m["name"]
    try:
        mv = (
            client.get_model_version(name, m["version"])
            if m["version"]
            else client.get_model_version_by_alias(name, m["alias"])
        )
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        raise LineageError(
            f"no model version {model_uri} in this tracking store ({exc.message[:200]}): "
            f"the registered versions are on the Models page of the MLflow UI; or pass --tracking-uri"
        ) from None
    datasets = []
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            run = None
        order = {"train": 0, "val": 1, "test": 2}
        for version, role, dname, di in sorted(_homogen_inputs(run) if run else [], key=lambda x: order.get(x[1], 3)):
            datasets.append(DatasetRole(role, version, dname, _store_uri(di)))
    scores = {k[len("test_mace.") :]: float(v) for k, v in mv.tags.items() if k.startswith("test_mace.")}
    return ModelLineage(
        model=name,
        version=str(mv.version),
        aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        run_id=mv.run_id,
        source=mv.source,
        datasets=datasets,
        scores=scores,
    )


def _recipe(params: dict[str, str]) -> str:
    p = params.get
    parts = [
        p("dataset.image_size"),
        f"P={p('dataset.patch_size')}" if p("dataset.patch_size") else None,
        f"rho={p('dataset.rho')}" if p("dataset.rho") else None,
        f"pairs/image={p('dataset.pairs_per_image')}" if p("dataset.pairs_per_image") else None,
        f"photometric={p('dataset.photometric')}" if p("dataset.photometric") else None,
        f"seed={p('dataset.seed')}" if p("dataset.seed") else None,
    ]
    return " ".join(x for x in parts if x) or "?"


def dataset_versions(tracking_uri: str | None = None) -> list[DatasetSummary]:
    """Every homogen dataset version that a run of the tracking store used, newest first."""
    client = _client(tracking_uri)
    runs = _search_runs(client, f"dataset.name LIKE '{PREFIX}%'")  # newest run first
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        for version in dict.fromkeys(x[0] for x in _homogen_inputs(r)):
            row = seen.setdefault(version, {"runs": [], "stores": {}, "params": {}})
            row["runs"].append(r)
            for v, _, _, di in _homogen_inputs(r):
                if v == version and (uri := _store_uri(di)):
                    row["stores"][uri] = None
            if r.data.params.get("dataset.version") == version and not row["params"]:
                row["params"] = r.data.params
    trained = _versions_of_runs(client, sorted({r.info.run_id for row in seen.values() for r in row["runs"]}))
    champions = _champions(client, {v.name for v in trained})
    out = []
    for version, row in seen.items():  # newest first: by the first run that used each version
        ids = {r.info.run_id for r in row["runs"]}
        models = [
            f"{v.name} v{v.version}" + (" (champion)" if champions.get(v.name) == str(v.version) else "")
            for v in sorted(trained, key=lambda v: (v.name, int(v.version)))
            if v.run_id in ids and v.tags.get("dataset_version", version) == version
        ]
        starts = [r.info.start_time for r in row["runs"] if r.info.start_time]
        pairs = row["params"].get("dataset.num_pairs")
        summary = DatasetSummary(
            version=version,
            first_used=_when(min(starts) if starts else None),
            last_used=_when(max(starts) if starts else None),
            pairs=int(pairs) if pairs and pairs.isdigit() else None,
            recipe=_recipe(row["params"]),
            stores=list(row["stores"]),
            runs=len(ids),
            models=models,
        )
        out.append((min(starts) if starts else 0, summary))
    return [d for _, d in sorted(out, key=lambda x: x[0], reverse=True)]
