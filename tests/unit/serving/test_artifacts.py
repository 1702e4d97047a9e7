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


def test_older_model_without_optional_files_loads_with_no_fresh_items(tmp_path: Path) -> None:
    directory = write_candidates(tmp_path)
    for key in ("fresh", "item_categories"):
        assert not (directory / CANDIDATE_ARTIFACTS[key]).exists()
    model = load_candidate_model(directory)
    assert model.fresh.tolist() == [] and model.item_categories is None
    cands = AnnCandidateSource(model).candidates(user_id=3, n=20)
    assert cands.n_fresh == 0 and "fresh" not in set(cands.sources())
    # A required file is still required.
    (directory / CANDIDATE_ARTIFACTS["popular"]).unlink()
    with pytest.raises(ArtifactError, match="popular.json"):
        load_candidate_model(directory)


def test_fresh_source_is_labelled_and_deduplicated(tmp_path: Path) -> None:
    directory = write_candidates(tmp_path)
    # 100 is also popular, 999 has no embedding (a brand-new item), 998 appears twice.
    (directory / CANDIDATE_ARTIFACTS["fresh"]).write_text(json.dumps([999, 100, 998, 998, 129]))
    np.save(directory / CANDIDATE_ARTIFACTS["item_categories"], np.arange(30) % 3)
    model = load_candidate_model(directory)
    source = AnnCandidateSource(model)
    assert {999, 998}.issubset(set(source.item_ids.tolist()))
    assert source.item_categories[source.item_ids.tolist().index(101)] == 1
    assert source.item_categories[source.item_ids.tolist().index(999)] == -1
    cands = source.candidates(user_id=3, n=40)  # 30 indexed items + 2 new: 32 distinct
    ids = cands.item_ids.tolist()
    assert len(ids) == len(set(ids)) == 32
    labels = dict(zip(ids, cands.sources(), strict=True))
    assert labels[999] == labels[998] == "fresh"
    assert [cands.source(i) for i in range(len(cands))] == list(cands.sources())
    assert np.isnan(cands.scores[ids.index(999)])  # no embedding: no inner product
    assert labels[100] == "ann"  # found by the ANN first: listed once, as ann
    assert list(cands.sources()[:cands.n_ann]) == ["ann"] * cands.n_ann
    # A damaged optional file is an error, not a silently empty source.
    np.save(directory / CANDIDATE_ARTIFACTS["item_categories"], np.arange(5))
    with pytest.raises(ArtifactError, match="item_categories"):
        load_candidate_model(directory)


def test_a_v2_ranker_records_its_features_and_a_v1_ranker_still_loads(tmp_path: Path) -> None:
    from recstack.schemas import RANKER_V2_USER_CATEGORY_FEATURES

    v1 = load_ranker(write_booster(tmp_path / "v1").parent.parent, version="1")
    assert v1.feature_service == "ranker_v1" and list(v1.feature_names) == RANKER_FEATURES
    names = ["user_clicks_28d", *RANKER_V2_USER_CATEGORY_FEATURES, "item_age_days",
             "cand_score"]
    path = write_booster(tmp_path / "v2", names)
    with pytest.raises(ArtifactError, match="records no feature list"):
        load_ranker(path.parent)  # other names and no metadata: refused
    (path.parent / "MLmodel").write_text(
        "flavors: {}\nmetadata:\n  feature_service: ranker_v2\n  feature_names: "
        + json.dumps(names) + "\n")
    v2 = load_ranker(path.parent, version="2")
    assert v2.feature_service == "ranker_v2" and list(v2.feature_names) == names
    (path.parent / "MLmodel").write_text(
        "metadata:\n  feature_names: " + json.dumps(names[::-1]) + "\n")
    with pytest.raises(ArtifactError, match="recorded"):
        load_ranker(path.parent)


class _Version:
    def __init__(self, version: str, run_id: str, tags: dict | None = None) -> None:
        self.version, self.run_id, self.tags = version, run_id, tags or {}


class _Registry:
    """An MLflow client with two runs' versions; the aliases as the gate leaves them."""

    def __init__(self, aliases: dict[str, str], tagged: bool) -> None:
        self.aliases = aliases
        self.versions = {
            ("candidates", "1"): _Version("1", "run-a"), ("candidates", "2"): _Version("2", "run-b"),
            ("ranker", "1"): _Version("1", "run-a", {"candidates_version": "1"} if tagged else {}),
            ("ranker", "2"): _Version("2", "run-b", {"candidates_version": "2"} if tagged else {}),
        }

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        return self.versions[(name, self.aliases[name])]

    def search_model_versions(self, query: str) -> list[_Version]:
        return [v for (name, _), v in self.versions.items()
                if f"name='{name}'" in query and f"run_id='{v.run_id}'" in query]


@pytest.mark.parametrize("tagged", [True, False])
def test_champion_pair_comes_from_the_rankers_run_not_two_alias_reads(tagged: bool) -> None:
    from recstack.settings import Settings
    from serving.artifacts import champion_versions

    settings = Settings()
    # Between the gate's two alias moves: candidates already at v2, the ranker still at v1.
    mid_promotion = _Registry({"candidates": "2", "ranker": "1"}, tagged)
    assert champion_versions(settings, mid_promotion) == {"candidates": "1", "ranker": "1"}
    done = _Registry({"candidates": "2", "ranker": "2"}, tagged)
    assert champion_versions(settings, done) == {"candidates": "2", "ranker": "2"}
