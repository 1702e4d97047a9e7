"""Drift scenarios: validated on load, and each changes the distribution it claims to.

Each statistical test compares the scenario's lake with the baseline lake of the same seed on
the days the drift is active, so a scenario that does nothing fails it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recstack import lake
from recstack.settings import Settings
from simulator.generate import simulate, world_dir
from simulator.scenarios import ScenarioError, list_scenarios, load_scenario
from simulator.world import COUNTRIES, World

P = 1e-4  # significance: the seeded runs are fixed, so this is about effect size, not luck


def _settings(home: Path) -> Settings:
    return Settings(
        home=home,
        sim={"n_users": 400, "n_items": 150, "n_categories": 5, "days": 3, "seed": 11},
    )


def _run(home: Path, scenario: str | None) -> tuple[pd.DataFrame, World]:
    s = _settings(home)
    simulate(s, scenario=load_scenario(scenario) if scenario else None)
    events = lake.read_events(s.lake_dir).to_pandas()
    items = lake.read_items(s.lake_dir).to_pandas().set_index("item_id")
    events["category"] = items.loc[events.item_id, "category"].to_numpy()
    events["created_at"] = items.loc[events.item_id, "created_at"].to_numpy()
    events["day"] = (events.ts.dt.date - s.sim.start_date).map(lambda d: d.days)
    return events, World.load(world_dir(s))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, World]:
    return _run(tmp_path_factory.mktemp("baseline"), None)


@pytest.fixture
def run(tmp_path: Path):
    return lambda name: _run(tmp_path / name, name)


def _share_test(a_hits: int, a_n: int, b_hits: int, b_n: int) -> float:
    """p-value of "the two shares are equal" (chi-square on the 2x2 table)."""
    table = np.array([[a_hits, a_n - a_hits], [b_hits, b_n - b_hits]])
    return stats.chi2_contingency(table)[1]


def test_every_bundled_scenario_loads_and_is_listed() -> None:
    names = {s.name for s in list_scenarios()}
    assert names >= {"taste-shift", "new-item-surge", "hot-item", "seasonality",
                     "new-user-surge", "data-bug"}
    for sc in list_scenarios():
        assert sc.description and "\n" not in sc.description


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\ndescription: d\ndrifts: []\n", "drifts"),
        ("name: x\ndescription: d\ndrifts:\n  - {kind: meteor, day: 1}\n", "kind"),
        ("name: x\ndescription: d\ndrifts:\n  - {kind: hot_item, day: -1}\n", "day"),
        (
            (
                "name: x\ndescription: d\ndrifts:\n"
                "  - {kind: data_bug, day: 1, field: request_id, effect: shift}\n"
            ),
            "shift",
        ),
        (
            (
                "name: x\ndescription: d\ndrifts:\n"
                "  - {kind: taste_shift, day: 0, segment: {country: mars}, to_categories: [1]}\n"
            ),
            "country",
        ),
        ("- not a mapping\n", "mapping"),
        ("name: [unclosed\n", "YAML"),
    ],
)
def test_invalid_scenarios_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="taste-shift"):
        load_scenario("no-such-scenario")


def test_scenario_must_fit_the_run_and_the_world(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with pytest.raises(ScenarioError, match="--days 2"):
        simulate(s, days=1, scenario=load_scenario("taste-shift"))
    path = tmp_path / "far.yaml"
    path.write_text("name: far\ndescription: d\ndrifts:\n  - {kind: seasonality, day: 0, "
                    "categories: [9]}\n")
    with pytest.raises(ScenarioError, match="categories"):
        simulate(s, scenario=load_scenario(path))


def test_same_seed_and_scenario_give_an_identical_lake(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        s = _settings(tmp_path / name)
        summary = simulate(s, scenario=load_scenario("data-bug"))
        files.append([p.read_bytes() for p in summary.files])
    assert files[0] == files[1]


def test_taste_shift_moves_the_segment_to_its_categories(baseline, run) -> None:
    base, world = baseline
    drifted, _ = run("taste-shift")

    def mix(df: pd.DataFrame) -> np.ndarray:
        us = world.user_country[df.user_id.to_numpy()] == COUNTRIES.index("us")
        clicks = df[(df.event_type == "click") & (df.day >= 1) & us]
        return np.bincount(clicks.category, minlength=world.n_categories)

    before, after = mix(base), mix(drifted)
    assert stats.chi2_contingency(np.stack([before, after]))[1] < P
    assert after[[2, 3]].sum() / after.sum() > before[[2, 3]].sum() / before.sum() + 0.1


def test_new_item_surge_raises_the_new_item_share(baseline, run) -> None:
    base, _ = baseline
    drifted, _ = run("new-item-surge")

    def new_share(df: pd.DataFrame) -> tuple[int, int]:
        imp = df[(df.event_type == "impression") & (df.day >= 1)]
        young = (imp.ts - imp.created_at) < pd.Timedelta(days=1)
        return int(young.sum()), len(imp)

    (a, n), (b, m) = new_share(base), new_share(drifted)
    assert _share_test(a, n, b, m) < P and b / m > a / n + 0.1


def test_hot_item_concentrates_clicks(baseline, run) -> None:
    base, _ = baseline
    drifted, _ = run("hot-item")

    def top_share(df: pd.DataFrame) -> tuple[int, int]:
        clicks = df[(df.event_type == "click") & (df.day >= 1)]
        return int(clicks.item_id.value_counts().iloc[0]), len(clicks)

    (a, n), (b, m) = top_share(base), top_share(drifted)
    assert _share_test(a, n, b, m) < P and b / m > 2 * a / n


def test_seasonality_moves_the_category_mix_with_the_cycle(baseline, run) -> None:
    base, _ = baseline
    drifted, _ = run("seasonality")

    def in_season(df: pd.DataFrame, day: int) -> tuple[int, int]:
        clicks = df[(df.event_type == "click") & (df.day == day)]
        return int(clicks.category.isin([0, 1]).sum()), len(clicks)

    (a, n), (b, m) = in_season(base, 0), in_season(drifted, 0)  # peak
    assert _share_test(a, n, b, m) < P and b / m > a / n
    (a, n), (b, m) = in_season(base, 2), in_season(drifted, 2)  # trough
    assert _share_test(a, n, b, m) < P and b / m < a / n


def test_new_user_surge_brings_new_users_from_its_day(baseline, run) -> None:
    base, world = baseline
    drifted, grown = run("new-user-surge")
    assert grown.n_users == world.n_users + 200
    new = drifted.user_id >= world.n_users
    assert not new[drifted.day == 0].any()
    later = drifted.day >= 1
    assert stats.ks_2samp(base.user_id[base.day >= 1], drifted.user_id[later]).pvalue < P
    assert (grown.user_country[world.n_users:] == COUNTRIES.index("br")).all()
    assert drifted[later].user_id.nunique() > 1.3 * base[base.day >= 1].user_id.nunique()


def test_data_bug_shifts_positions_and_nulls_model_version(baseline, run) -> None:
    base, _ = baseline
    drifted, _ = run("data-bug")
    before, after = drifted[drifted.day == 0], drifted[drifted.day >= 1]
    assert before.position.min() == 0 and before.model_version.notna().all()
    assert after.position.min() == 1  # 0-based index written 1-based
    later = base[base.day >= 1]
    assert stats.ks_2samp(later.position, after.position).pvalue < P
    nulls = int(after.model_version.isna().sum())
    assert stats.binomtest(nulls, len(after), 0.33).pvalue > 1e-3  # about a third ...
    assert stats.binomtest(nulls, len(after), 0.01, alternative="greater").pvalue < P  # ... not 0
    # Schema-valid: the lake reads back, every other column intact.
    assert after.event_id.notna().all() and after.ts.notna().all()


def test_a_run_replaces_the_lake(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    simulate(s)  # 3 days, seed 11
    shorter = s.model_copy(update={"sim": s.sim.model_copy(update={"seed": 12, "days": 2})})
    summary = simulate(shorter)
    assert summary.removed_files == 5  # 3 partitions + the catalogue + the user profile
    assert lake.read_users(s.lake_dir).num_rows == shorter.sim.n_users
    assert lake.list_days(s.lake_dir) == [s.sim.start_date + dt.timedelta(days=i) for i in (0, 1)]
    parts = sorted(p.name for p in (s.lake_dir / lake.EVENTS).rglob("*.parquet"))
    assert parts == ["part-sim-12.parquet"] * 2
