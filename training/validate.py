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

import numpy as np

from recstack.schemas import CANDIDATE_ARTIFACTS, RANKER_FEATURES

logger = logging.getLogger(__name__)


def candidate_problems(root: Path) -> list[str]:
    """What is wrong with the candidate artifact under ``root`` (empty list: nothing)."""
    metas = sorted(Path(root).rglob(CANDIDATE_ARTIFACTS["meta"]))
    if not metas:
        return [f"no {CANDIDATE_ARTIFACTS['meta']} under the candidates artifact"]
    directory = metas[0].parent
    missing = [f for f in CANDIDATE_ARTIFACTS.values() if not (directory / f).is_file()]
    if missing:
        return [f"candidate files missing: {missing}"]
    try:
        from training.candidates import load_artifacts

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
    return problems


def ranker_problems(
    root: Path, rows: np.ndarray | None = None, expected: np.ndarray | None = None
) -> list[str]:
    """What is wrong with the ranker artifact under ``root``: one readable ``*.lgb`` booster
    with RANKER_FEATURES in order that, given ``rows``, reproduces ``expected`` scores."""
    import lightgbm as lgb

    files = sorted(Path(root).rglob("*.lgb"))
    if len(files) != 1:
        return [f"expected one *.lgb file in the ranker artifact, found {len(files)}"]
    try:
        booster = lgb.Booster(model_file=str(files[0]))
    except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error types
        return [f"ranker booster unreadable: {type(exc).__name__}: {exc}"]
    if booster.feature_name() != RANKER_FEATURES:
        return [f"ranker features {booster.feature_name()} != {RANKER_FEATURES}"]
    if rows is not None and expected is not None:
        got = booster.predict(np.asarray(rows, dtype=np.float32), num_threads=1)
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-7):
            return ["the loaded ranker's scores differ from the trained booster's"]
    return []
