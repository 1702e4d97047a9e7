"""Load a model version's files back and check them, before any alias may point at it.

In:  a downloaded ``candidates`` directory (CANDIDATE_ARTIFACTS somewhere below it) or a
     ``ranker`` directory (one ``*.lgb`` below it), optionally rows and the scores the
     in-memory booster gave them.
Out: a list of problems (empty: valid). The checks mirror what serving checks on load
     (``serving/artifacts.py``), so a version that passes here also loads there; a truncated
     or corrupted file, a missing file or a shape mismatch is a problem, never an exception.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import yaml

from recstack.schemas import (
    CANDIDATE_ARTIFACTS,
    CANDIDATE_SCORE_FEATURE,
    CROSS_FEATURES,
    FEATURE_VIEW_FEATURES,
    OPTIONAL_CANDIDATE_ARTIFACTS,
    SOURCE_FEATURES,
)
from training.candidates import load_artifacts, load_optional_artifacts

logger = logging.getLogger(__name__)

SERVABLE_FEATURES = frozenset(
    [n for names in FEATURE_VIEW_FEATURES.values() for n in names]
    + [CANDIDATE_SCORE_FEATURE, *SOURCE_FEATURES.values(), *CROSS_FEATURES])


def candidate_problems(root: Path) -> list[str]:
    """What is wrong with the candidate artifact under ``root`` (empty list: nothing)."""
    metas = sorted(Path(root).rglob(CANDIDATE_ARTIFACTS["meta"]))
    if not metas:
        return [f"no {CANDIDATE_ARTIFACTS['meta']} under the candidates artifact"]
    directory = metas[0].parent
    missing = [f for k, f in CANDIDATE_ARTIFACTS.items()
               if k not in OPTIONAL_CANDIDATE_ARTIFACTS and not (directory / f).is_file()]
    if missing:
        return [f"candidate files missing: {missing}"]
    try:
        model, index, popular, meta = load_artifacts(directory)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a reason to reject, not to crash
        return [f"candidate artifact unreadable: {type(exc).__name__}: {exc}"]
    problems = []
    n_items, n_users = len(model.item_ids), len(model.user_ids)
    if model.item_embeddings.shape[0] != n_items:
        problems.append(f"item_embeddings rows {model.item_embeddings.shape[0]} != {n_items}")
    if model.user_embeddings.shape[0] != n_users:
        problems.append(f"user_embeddings rows {model.user_embeddings.shape[0]} != {n_users}")
    if model.user_embeddings.shape[1:] != model.item_embeddings.shape[1:]:
        problems.append("user and item embedding dims differ")
    if index.ntotal != n_items or index.d != model.item_embeddings.shape[1]:
        problems.append(f"index {index.ntotal}x{index.d} != items {model.item_embeddings.shape}")
    if int(meta.get("dim", model.dim)) != model.dim:
        problems.append(f"meta dim {meta.get('dim')} != {model.dim}")
    if len(np.unique(model.item_ids)) != n_items:
        problems.append("duplicate item ids")
    if not np.isfinite(model.item_embeddings).all() or not np.isfinite(model.user_embeddings).all():
        problems.append("non-finite embeddings")
    if n_items == 0:
        problems.append("no items")
    if not isinstance(popular, list):
        problems.append("popular list is not a list")
    try:
        fresh, categories = load_optional_artifacts(directory)
    except Exception as exc:  # noqa: BLE001 - present but unreadable is a problem
        return [*problems, f"optional candidate file unreadable: {type(exc).__name__}: {exc}"]
    if not isinstance(fresh, list) or not all(isinstance(i, int) for i in fresh):
        problems.append("fresh list is not a list of item ids")
    if categories is not None and categories.shape != (n_items,):
        problems.append(f"item_categories shape {categories.shape} != ({n_items},)")
    return problems


def ranker_problems(
    root: Path, rows: np.ndarray | None = None, expected: np.ndarray | None = None
) -> list[str]:
    """What is wrong with the ranker artifact under ``root``: one readable ``*.lgb`` booster
    whose features serving can build (and, when the MLmodel metadata lists them, exactly
    those in that order) that, given ``rows``, reproduces ``expected`` scores."""
    files = sorted(Path(root).rglob("*.lgb"))
    if len(files) != 1:
        return [f"expected one *.lgb file in the ranker artifact, found {len(files)}"]
    try:
        booster = lgb.Booster(model_file=str(files[0]))
    except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error types
        return [f"ranker booster unreadable: {type(exc).__name__}: {exc}"]
    names = booster.feature_name()
    unknown = [n for n in names if n not in SERVABLE_FEATURES]
    if unknown:
        return [f"ranker features {unknown} are not servable (known: stored views, "
                f"{CANDIDATE_SCORE_FEATURE}, source one-hots)"]
    meta = ranker_metadata(files[0].parent)
    if meta.get("feature_names") is not None and list(meta["feature_names"]) != names:
        return [f"ranker features {names} != the artifact's recorded {meta['feature_names']}"]
    if rows is not None and expected is not None:
        got = booster.predict(np.asarray(rows, dtype=np.float32), num_threads=1)
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-7):
            return ["the loaded ranker's scores differ from the trained booster's"]
    return []


def ranker_metadata(directory: Path) -> dict:
    """The ``metadata`` of the MLmodel file in ``directory`` ({} when absent or unreadable)."""
    path = Path(directory) / "MLmodel"
    try:
        return dict((yaml.safe_load(path.read_text()) or {}).get("metadata") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
