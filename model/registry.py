"""The registered model and its champion: version tags and the rule that moves the alias.

The registered model (``homographynet`` unless configured) has one alias, ``champion``;
``models:/homographynet@champion`` loads it. Scores are only ever compared **on the same test
dataset version**: every version carries the tag ``test_mace.<dataset_version>`` (its test MACE on
that dataset's test split, scored once after training, model selection having used ``val`` only)
beside ``dataset_version``, ``test_dataset_version``, ``rho``, ``patch_size`` and ``test_mace``.

Champion rule (:func:`promote_if_better`):

1. No champion yet: the new version becomes champion.
2. The champion already has a score on the new version's test dataset (tag
   ``test_mace.<dataset_version>``): the alias moves iff the new test MACE is strictly lower.
3. Otherwise (champion tested on another dataset version) the champion is scored on the very
   same test pairs the new version was scored on; its score is cached on it as the tag
   ``test_mace.<dataset_version>``, and rule 2 decides.
4. If the champion cannot be scored there (its model does not load, or its patch size differs
   from the dataset's), the two are not comparable and the champion stays.

Each new version gets the tag ``promotion`` saying what was decided and why. Registrations of
two runs at the same moment are not serialised (last writer of the alias wins).
"""

from __future__ import annotations

from typing import Any, Callable

from homogen.redaction import redact

__all__ = ["CHAMPION", "MODEL_NAME", "promote_if_better", "register_model_tags"]

MODEL_NAME = "homographynet"
CHAMPION = "champion"


def register_model_tags(
    client: Any, name: str, version: str, *, dataset_version: str, rho: int, patch_size: int, test_mace: float
) -> None:
    """Tag a registered version with its dataset and test score (see the module docstring)."""
    tags = {
        "dataset_version": dataset_version,
        "test_dataset_version": dataset_version,
        "rho": str(rho),
        "patch_size": str(patch_size),
        "test_mace": f"{test_mace:.6f}",
        f"test_mace.{dataset_version}": f"{test_mace:.6f}",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def promote_if_better(
    client: Any,
    name: str,
    version: str,
    dataset_version: str,
    test_mace: float,
    score_champion: Callable[[str], float] | None = None,
    alias: str = CHAMPION,
) -> tuple[bool, str]:
    """Apply the champion rule of the module docstring; returns ``(became_champion, reason)``.

    ``score_champion(champion_version)`` scores the current champion on the new version's test
    pairs (rule 3); without it a champion with no score on ``dataset_version`` is kept.
    """
    from mlflow.exceptions import MlflowException

    key = f"test_mace.{dataset_version}"
    try:
        champ = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    if champ is None:
        decision, reason = True, "first version: no champion yet"
    elif str(champ.version) == str(version):
        decision, reason = True, "already champion"
    else:
        score = champ.tags.get(key)
        champ_mace: float | None = float(score) if score is not None else None
        if champ_mace is None and score_champion is not None:
            try:
                champ_mace = float(score_champion(str(champ.version)))
                client.set_model_version_tag(name, champ.version, key, f"{champ_mace:.6f}")
            except Exception as exc:  # noqa: BLE001 - not comparable: keep the champion
                champ_mace = None
                why = redact(f"{type(exc).__name__}: {exc}")[:200]
                reason = f"kept v{champ.version}: it cannot be scored on dataset {dataset_version} ({why})"
        if champ_mace is None:
            decision = False
            if score_champion is None:
                reason = f"kept v{champ.version}: it has no test MACE on dataset {dataset_version}"
        elif test_mace < champ_mace:
            decision = True
            reason = (
                f"test MACE {test_mace:.4f} < champion v{champ.version}'s {champ_mace:.4f} on dataset {dataset_version}"
            )
        else:
            decision = False
            reason = f"test MACE {test_mace:.4f} >= champion v{champ.version}'s {champ_mace:.4f} on dataset {dataset_version}"
    if decision:
        client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, version, "promotion", reason)
    return decision, reason
