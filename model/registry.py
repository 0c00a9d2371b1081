"""The registered model and its champion: version tags and the rule that moves the alias.

The registered model (``homographynet`` unless configured) has one alias, ``champion``;
``models:/homographynet@champion`` loads it. Scores are only ever compared **on the same test
pairs**: every version carries the tags ``test_mace.<dataset_version>`` (its test MACE on that
dataset's test split, scored once after training, model selection having used ``val`` only) and
``test_pairs.<dataset_version>`` (how many test pairs, the first N of the split, were scored),
beside ``dataset_version``, ``test_dataset_version``, ``rho``, ``patch_size``, ``test_mace`` and
``identity_mace`` (predicting no motion, on the same pairs).

Registration gate (:func:`check_registrable`): a version is registered only when its test MACE
(mean, median and p95) is finite; a diverged network is refused before anything is logged.

Champion rule (:func:`promote_if_better`), in order:

1. **Beat the identity.** The new version becomes champion only if its test MACE is at most
   ``1 - IDENTITY_MARGIN`` (95 %) of the identity's on the same test pairs: a network that does not
   predict motion 5 % better than "no motion" is registered, never served as champion.
2. No champion yet: the new version becomes champion.
3. The champion's score on the same test pairs (tags ``test_mace.<dataset_version>`` and
   ``test_pairs.<dataset_version>``) is read, or, when it has none, computed by
   ``score_champion`` on the very same pairs and cached on it as those two tags.
4. A champion that does not itself beat the identity there (a NaN, a diverged network crowned by
   an older release), or that cannot be scored there because it is damaged or takes another patch
   size, never blocks: the new version replaces it.
5. Otherwise the alias moves iff the new test MACE is strictly lower than the champion's.

Each new version gets the tag ``promotion`` saying what was decided and why (also logged). When
the alias moves, the previous champion's run tag ``champion`` becomes ``false``: the alias is the
one place that says which version is champion. Registrations of two runs at the same moment are
not serialised (last writer of the alias wins).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from homogen.redaction import redact

__all__ = [
    "CHAMPION",
    "IDENTITY_MARGIN",
    "MODEL_NAME",
    "NotRegistrable",
    "check_registrable",
    "promote_if_better",
    "register_model_tags",
]

log = logging.getLogger(__name__)

MODEL_NAME = "homographynet"
CHAMPION = "champion"
IDENTITY_MARGIN = 0.05
"""A champion's test MACE is at most ``(1 - IDENTITY_MARGIN)`` x the identity's on the same test pairs."""


class NotRegistrable(ValueError):
    """A trained network whose test scores are not finite: it is not logged nor registered."""


def check_registrable(results: dict[str, Any], n_pairs: int) -> None:
    """Refuse a network whose test MACE mean, median or p95 is not finite (``results``: one method's summary).

    Raises:
        NotRegistrable: naming the value and the likely cause.
    """
    bad = {k: results.get(k) for k in ("mean", "median", "p95") if not _finite(results.get(k))}
    if n_pairs <= 0 or bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items()) or "no test pairs"
        raise NotRegistrable(
            f"the trained network's test MACE is not finite ({shown} on {n_pairs} test pairs): not registered; "
            f"training diverged, so lower the learning rate (--lr) or check the store"
        )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def register_model_tags(
    client: Any,
    name: str,
    version: str,
    *,
    dataset_version: str,
    rho: int,
    patch_size: int,
    test_mace: float,
    test_pairs: int | None = None,
    identity_mace: float | None = None,
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
    if test_pairs is not None:
        tags[f"test_pairs.{dataset_version}"] = str(int(test_pairs))
    if identity_mace is not None:
        tags["identity_mace"] = f"{identity_mace:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def _cached_score(tags: dict[str, str], dataset_version: str, test_pairs: int | None) -> float | None:
    """The champion's cached score on these test pairs, or None (none cached, or on another number of pairs)."""
    score = tags.get(f"test_mace.{dataset_version}")
    if score is None:
        return None
    pairs = tags.get(f"test_pairs.{dataset_version}")
    if test_pairs is not None and pairs is not None and int(pairs) != int(test_pairs):
        return None
    return float(score)


def promote_if_better(
    client: Any,
    name: str,
    version: str,
    dataset_version: str,
    test_mace: float,
    score_champion: Callable[[str], float] | None = None,
    alias: str = CHAMPION,
    *,
    identity_mace: float | None = None,
    test_pairs: int | None = None,
) -> tuple[bool, str]:
    """Apply the champion rule of the module docstring; returns ``(became_champion, reason)``.

    Args:
        identity_mace: the identity's MACE on the same test pairs (rule 1); None skips rule 1
            (only for versions registered without it).
        test_pairs: how many test pairs were scored (a champion's cached score counts only on as many).
        score_champion: ``score_champion(champion_version)`` scores the current champion on the new
            version's test pairs (rule 3); without it a champion with no score there is kept.
            A ``ValueError`` from it means "not comparable" (damaged, another patch size): rule 4.
    """
    from mlflow.exceptions import MlflowException

    margin_mace = None if identity_mace is None else (1.0 - IDENTITY_MARGIN) * float(identity_mace)
    on = f"on dataset {dataset_version}" + (f" ({test_pairs} test pairs)" if test_pairs is not None else "")

    def beats_identity(mace: float | None) -> bool:
        return mace is not None and math.isfinite(mace) and (margin_mace is None or mace <= margin_mace)

    try:
        champ = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    if not beats_identity(test_mace):
        decision = False
        reason = (
            f"not champion: test MACE {test_mace:.4f} is not {IDENTITY_MARGIN:.0%} below the identity's "
            f"{identity_mace:.4f} {on} (it must be <= {margin_mace:.4f})"
            if identity_mace is not None and math.isfinite(test_mace)
            else f"not champion: test MACE {test_mace} is not finite"
        )
    elif champ is None:
        decision = True
        reason = (
            "first version: no champion yet"
            if identity_mace is None
            else f"first champion: test MACE {test_mace:.4f} <= {1 - IDENTITY_MARGIN:.2f} x the identity's "
            f"{identity_mace:.4f} {on}"
        )
    elif str(champ.version) == str(version):
        decision, reason = True, "already champion"
    else:
        decision, reason = _against_champion(
            client, name, champ, dataset_version, test_mace, test_pairs, score_champion, beats_identity, on
        )
    if decision and (champ is None or str(champ.version) != str(version)):
        client.set_registered_model_alias(name, alias, str(version))
        if champ is not None and champ.run_id:
            try:  # the previous champion's run no longer says "champion: true"
                client.set_tag(champ.run_id, "champion", "false")
            except MlflowException as exc:  # its run was deleted: nothing stale left to correct
                log.debug("run %s of v%s: %s", champ.run_id, champ.version, exc)
    client.set_model_version_tag(name, version, "promotion", reason)
    log.info("%s v%s: %s", name, version, reason)
    return decision, reason


def _against_champion(
    client: Any,
    name: str,
    champ: Any,
    dataset_version: str,
    test_mace: float,
    test_pairs: int | None,
    score_champion: Callable[[str], float] | None,
    beats_identity: Callable[[float | None], bool],
    on: str,
) -> tuple[bool, str]:
    """Rules 3-5 of the module docstring: the new version (which beats the identity) against the champion."""
    champ_mace = _cached_score(champ.tags, dataset_version, test_pairs)
    if champ_mace is None and score_champion is None:
        return False, f"kept v{champ.version}: it has no test MACE {on}"
    if champ_mace is None:
        try:
            champ_mace = float(score_champion(str(champ.version)))
        except ValueError as exc:  # damaged, or another patch size: not comparable, and never a blocker
            why = redact(f"{type(exc).__name__}: {exc}")[:200]
            return True, f"replaced v{champ.version}: it cannot be scored {on} ({why}); test MACE {test_mace:.4f}"
        except Exception as exc:  # noqa: BLE001 - e.g. the tracking server went away: keep the champion
            why = redact(f"{type(exc).__name__}: {exc}")[:200]
            return False, f"kept v{champ.version}: it could not be scored {on} ({why})"
        client.set_model_version_tag(name, champ.version, f"test_mace.{dataset_version}", f"{champ_mace:.6f}")
        if test_pairs is not None:
            client.set_model_version_tag(name, champ.version, f"test_pairs.{dataset_version}", str(test_pairs))
    if not beats_identity(champ_mace):
        return True, (
            f"replaced v{champ.version}: its test MACE {champ_mace:.4f} does not beat the identity {on}; "
            f"test MACE {test_mace:.4f}"
        )
    if test_mace < champ_mace:
        return True, f"test MACE {test_mace:.4f} < champion v{champ.version}'s {champ_mace:.4f} {on}"
    return False, f"test MACE {test_mace:.4f} >= champion v{champ.version}'s {champ_mace:.4f} {on}"
