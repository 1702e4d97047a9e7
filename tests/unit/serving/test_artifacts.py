"""The artifact loader on directories built here: a tiny faiss index and a tiny booster."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import lightgbm
import numpy as np
import pytest

from recstack.schemas import CANDIDATE_ARTIFACTS, RANKER_FEATURES
from serving.artifacts import find_candidate_dir, load_candidate_model, load_ranker
from serving.candidates import AnnCandidateSource
from serving.errors import ArtifactError

DIM = 4


def write_candidates(root: Path, n_items: int = 30, n_users: int = 10) -> Path:
    directory = root / "artifacts" / "candidates"  # nested, as MLflow downloads it
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    items = rng.normal(size=(n_items, DIM)).astype(np.float32)
    np.save(directory / CANDIDATE_ARTIFACTS["item_ids"], np.arange(100, 100 + n_items))
    np.save(directory / CANDIDATE_ARTIFACTS["item_embeddings"], items)
    np.save(directory / CANDIDATE_ARTIFACTS["user_ids"], np.arange(n_users))
    np.save(directory / CANDIDATE_ARTIFACTS["user_embeddings"],
            rng.normal(size=(n_users, DIM)).astype(np.float32))
    index = faiss.IndexFlatIP(DIM)
    index.add(items)
    faiss.write_index(index, str(directory / CANDIDATE_ARTIFACTS["index"]))
    (directory / CANDIDATE_ARTIFACTS["popular"]).write_text(json.dumps([105, 101, 100]))
    (directory / CANDIDATE_ARTIFACTS["meta"]).write_text(json.dumps({"dim": DIM}))
    return directory


def write_booster(root: Path, names: list[str] = RANKER_FEATURES) -> Path:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, len(names)))
    y = (x[:, -1] + 0.1 * rng.normal(size=200) > 0).astype(int)
    data = lightgbm.Dataset(x, y, feature_name=list(names))
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "num_threads": 1}, data, 5)
    path = root / "ranker" / "model.lgb"
    path.parent.mkdir(parents=True)
    booster.save_model(str(path))
    return path


def test_loads_a_consistent_candidate_model(tmp_path: Path) -> None:
    written = write_candidates(tmp_path)
    directory = find_candidate_dir(tmp_path)
    assert directory == written
    model = load_candidate_model(directory, version="4")
    assert model.version == "4" and model.index.ntotal == 30
    assert model.popular.tolist() == [105, 101, 100]
    cands = AnnCandidateSource(model).candidates(user_id=3, n=10)
    assert len(cands) == 10 and len(set(cands.item_ids.tolist())) == 10
    assert not cands.cold_start and cands.n_ann >= 9


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / CANDIDATE_ARTIFACTS["index"]).unlink(), "missing"),
        (lambda d: np.save(d / CANDIDATE_ARTIFACTS["item_ids"], np.arange(29)), "item_ids"),
        (lambda d: np.save(d / CANDIDATE_ARTIFACTS["user_embeddings"],
                           np.zeros((10, DIM + 1), np.float32)), "dims differ"),
        (lambda d: (d / CANDIDATE_ARTIFACTS["index"]).write_bytes(b"garbage"), "unreadable"),
        (lambda d: (d / CANDIDATE_ARTIFACTS["meta"]).write_text('{"dim": 99}'), "meta dim"),
    ],
)
def test_rejects_a_broken_candidate_model(tmp_path: Path, damage, message: str) -> None:
    directory = write_candidates(tmp_path)
    damage(directory)
    with pytest.raises(ArtifactError, match=message):
        load_candidate_model(directory)


def test_no_meta_json_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="meta.json"):
        find_candidate_dir(tmp_path)


def test_loads_a_booster_and_scores_one_row_per_candidate(tmp_path: Path) -> None:
    write_booster(tmp_path)
    ranker = load_ranker(tmp_path, version="9")
    assert ranker.version == "9" and list(ranker.feature_names) == RANKER_FEATURES
    x = np.random.default_rng(3).normal(size=(50, len(RANKER_FEATURES))).astype(np.float32)
    x[:, 0] = np.nan  # user features missing (Redis down) must still score
    scores = ranker.score(x)
    assert scores.shape == (50,) and np.isfinite(scores).all()


def test_rejects_a_booster_with_other_feature_names(tmp_path: Path) -> None:
    write_booster(tmp_path, names=[f"f{i}" for i in range(len(RANKER_FEATURES))])
    with pytest.raises(ArtifactError, match="feature names"):
        load_ranker(tmp_path)


def test_rejects_a_missing_or_corrupt_booster(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="one \\*.lgb"):
        load_ranker(tmp_path)
    (tmp_path / "bad.lgb").write_text("not a model")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_ranker(tmp_path)
