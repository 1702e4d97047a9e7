"""The simulator's verbs: `recstack scenarios`, `simulate --scenario`, `import`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recstack import lake
from recstack.settings import Settings, get_settings
from simulator.cli import app
from simulator.scenarios import ScenarioError

runner = CliRunner()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in {"N_USERS": "200", "N_ITEMS": "150", "N_CATEGORIES": "5", "SEED": "7"}.items():
        monkeypatch.setenv(f"RECSTACK_SIM__{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_scenarios_lists_every_bundled_file(env: Settings) -> None:
    result = runner.invoke(app, ["scenarios"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("taste-shift", "new-item-surge", "hot-item", "seasonality", "new-user-surge",
                 "data-bug"):
        assert name in result.output


def test_simulate_with_a_scenario_writes_its_days(env: Settings) -> None:
    result = runner.invoke(app, ["simulate", "--scenario", "hot-item", "--days", "2"])
    assert result.exit_code == 0, result.output
    assert len(lake.list_days(env.lake_dir)) == 2
    bad = runner.invoke(app, ["simulate", "--scenario", "no-such"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ScenarioError)


def test_import_reports_bad_rows(env: Settings, tmp_path: Path) -> None:
    source = tmp_path / "u.data"
    source.write_text("1\t2\t5\t881250949\nx\t2\t5\t881250949\n")
    result = runner.invoke(app, ["import", str(source), "--format", "movielens"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad rows" in result.output and "line 2" in result.output
