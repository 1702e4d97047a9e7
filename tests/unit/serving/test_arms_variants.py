"""The arms' model loader: alias and version resolution, hot swap, rebuild on new features."""

from __future__ import annotations

from dataclasses import dataclass, replace

from recstack.settings import Settings
from serving.arms import build_experiment
from serving.variants import VariantLoader, resolve_versions
from tests.unit.serving.conftest import FakeRanker, item_table, make_resources, tiny_model


@dataclass
class Version:
    version: str
    run_id: str


class FakeRegistry:
    """The MlflowClient calls the loader makes."""

    def __init__(self) -> None:
        self.aliases = {("candidates", "challenger"): "4", ("ranker", "challenger"): "9"}
        self.versions = {"candidates": [Version("3", "run-a"), Version("4", "run-b")],
                         "ranker": [Version("8", "run-a"), Version("9", "run-b")]}

    def get_model_version_by_alias(self, name: str, alias: str) -> Version:
        return self.get_model_version(name, self.aliases[(name, alias)])

    def get_model_version(self, name: str, version: str) -> Version:
        return next(v for v in self.versions[name] if v.version == version)

    def search_model_versions(self, query: str) -> list[Version]:
        parts = query.split("'")  # name='x' [and run_id='y']
        found = self.versions[parts[1]]
        return [v for v in found if v.run_id == parts[3]] if len(parts) > 3 else found


@dataclass
class Loaded:
    candidates: object
    ranker: object


def fake_load(calls: list[dict[str, str]]):
    def load(settings: Settings, versions: dict[str, str]) -> Loaded:
        calls.append(dict(versions))
        ranker = FakeRanker()
        ranker.version = versions["ranker"]
        return Loaded(replace(tiny_model(), version=versions["candidates"]), ranker)

    return load


def test_resolve_aliases_and_ranker_versions() -> None:
    s, reg = Settings(), FakeRegistry()
    assert resolve_versions(reg, s, "challenger") == {"candidates": "4", "ranker": "9"}
    assert resolve_versions(reg, s, "ranker@challenger") == {"candidates": "4", "ranker": "9"}
    assert resolve_versions(reg, s, "8") == {"candidates": "3", "ranker": "8"}
    assert resolve_versions(reg, s, "ranker@8") == {"candidates": "3", "ranker": "8"}


def test_loader_loads_the_arm_swaps_on_alias_move_and_rebuilds_on_new_features() -> None:
    s = Settings(ab={"mode": "ab", "poll_s": 1e-9})
    exp = build_experiment(s.ab)
    resources = make_resources()
    loader, reg, calls = VariantLoader(s, exp, resources), FakeRegistry(), []
    assert [a.name for a in loader.arms()] == ["treatment"]  # the control is the champion

    loader.step(reg, fake_load(calls))
    arm = exp.arm("treatment")
    assert calls == [{"candidates": "4", "ranker": "9"}]
    assert arm.recommender.versions == {"candidates": "4", "ranker": "9"}
    first = arm.recommender

    loader.step(reg, fake_load(calls))  # nothing moved: no download, no rebuild
    assert len(calls) == 1 and arm.recommender is first

    resources.item_features = item_table(tiny_model())  # a materialization landed
    loader.step(reg, fake_load(calls))
    assert len(calls) == 1 and arm.recommender is not first
    assert arm.recommender.recommend(3, 5).items  # it serves

    reg.aliases = {("candidates", "challenger"): "3", ("ranker", "challenger"): "8"}
    loader.step(reg, fake_load(calls))
    assert calls[-1] == {"candidates": "3", "ranker": "8"}
    assert arm.recommender.versions == {"candidates": "3", "ranker": "8"}


def test_an_arm_reads_features_through_its_own_readers_when_given() -> None:
    s = Settings(ab={"mode": "ab", "poll_s": 1e-9})
    exp = build_experiment(s.ab)
    built = []

    def readers(source, ranker):
        built.append(ranker.version)
        return "arm user reader", item_table(tiny_model())

    loader = VariantLoader(s, exp, make_resources(), readers=readers)
    loader.step(FakeRegistry(), fake_load([]))
    scorer = exp.arm("treatment").recommender.scorer
    assert built == ["9"] and scorer.user_features == "arm user reader"
