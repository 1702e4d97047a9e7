"""Pre-materialization checks, the Feast definitions and ``run_all``'s arguments (no network)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.materialize import FeatureTableError, check_table, load_definitions, validate_tables
from pipelines.run import feature_argv
from pipelines.tables import ITEM_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
from recstack.schemas import (
    ITEM_FEATURE_VIEW,
    ITEM_FEATURES,
    USER_FEATURE_VIEW,
    USER_FEATURES,
    USER_FEATURES_FILE,
)
from recstack.settings import REPO_ROOT, Settings

T = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)


def user_table(**changes) -> pa.Table:
    row = {"user_id": 1, "user_impressions_7d": 10, "user_clicks_7d": 1, "user_ctr_7d": 0.1,
           "user_active_days_7d": 2, "event_timestamp": T, "created": T}
    columns = {k: [v] for k, v in {**row, **changes}.items()}
    schema = pa.schema([f.with_nullable(True) for f in USER_FEATURES_SCHEMA])
    return pa.table(columns, schema=schema)


def test_a_good_table_passes_with_its_summary() -> None:
    summary = check_table(USER_FEATURES_FILE, user_table(), USER_FEATURES_SCHEMA)
    assert (summary.rows, summary.entities, summary.first, summary.last) == (1, 1, T, T)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (user_table(user_ctr_7d=1.5), "user_ctr_7d outside"),
        (user_table(user_clicks_7d=-1), "negative values in user_clicks_7d"),
        (user_table(user_id=None), "nulls in user_id"),
        (user_table().slice(0, 0), "empty"),
        (user_table().drop_columns(["created"]), "missing columns"),
    ],
)
def test_a_bad_table_is_a_clear_error(table: pa.Table, message: str) -> None:
    with pytest.raises(FeatureTableError, match=message):
        check_table(USER_FEATURES_FILE, table, USER_FEATURES_SCHEMA)


def test_missing_tables_say_to_run_the_pipeline(tmp_path: Path) -> None:
    with pytest.raises(FeatureTableError, match="run the feature pipeline first"):
        validate_tables(tmp_path)


def test_definitions_match_the_kernel_names_and_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSTACK_FEATURES_DIR", str(tmp_path))
    objects = {type(o).__name__ + ":" + o.name: o for o in load_definitions(REPO_ROOT / "feature_repo")}
    user_view = objects[f"FeatureView:{USER_FEATURE_VIEW}"]
    item_view = objects[f"FeatureView:{ITEM_FEATURE_VIEW}"]
    assert [f.name for f in user_view.features] == USER_FEATURES
    assert [f.name for f in item_view.features] == ITEM_FEATURES
    assert user_view.batch_source.path == str(tmp_path / USER_FEATURES_FILE)
    assert {f.name: str(f.dtype) for f in item_view.features}["item_ctr_7d"] == "Float64"
    assert [str(f.dtype) for f in user_view.features] == [
        "Int64" if USER_FEATURES_SCHEMA.field(n).type == pa.int64() else "Float64"
        for n in USER_FEATURES]
    assert [str(f.dtype) for f in item_view.features] == [
        "Int64" if ITEM_FEATURES_SCHEMA.field(n).type == pa.int64() else "Float64"
        for n in ITEM_FEATURES]
    assert f"FeatureService:{Settings().feast.feature_service}" in objects
    v1 = objects["FeatureService:ranker_v1"]
    assert {p.name for p in v1.feature_view_projections} == {USER_FEATURE_VIEW,
                                                             ITEM_FEATURE_VIEW}
    v2 = objects["FeatureService:ranker_v2"]
    assert {p.name for p in v2.feature_view_projections} == {
        USER_FEATURE_VIEW, ITEM_FEATURE_VIEW, "user_features_v2", "item_features_v2",
        "user_category_features"}
    assert {"Entity:user", "Entity:item"} <= set(objects)


def test_feature_argv_uses_settings_and_lets_beam_flags_override_the_runner(tmp_path) -> None:
    s = Settings(home=tmp_path, pipeline={"window_days": 3, "popular_size": 7})
    argv = feature_argv(s)
    assert argv[argv.index("--lake") + 1] == str(s.lake_dir)
    assert argv[argv.index("--window-days") + 1] == "3"
    assert argv[argv.index("--popular-size") + 1] == "7"
    assert argv[argv.index("--runner") + 1] == "DirectRunner"
    custom = feature_argv(s, ["--runner=PortableRunner", "--job_endpoint=embed"])
    assert "DirectRunner" not in custom and custom[-2:] == ["--runner=PortableRunner",
                                                           "--job_endpoint=embed"]


def test_ranker_v2_adds_views_and_ranker_v1_keeps_its_features(monkeypatch, tmp_path) -> None:
    from pipelines.tables import V2_TABLES
    from recstack.schemas import (
        RANKER_V2_ITEM_FEATURES,
        RANKER_V2_USER_CATEGORY_FEATURES,
        RANKER_V2_USER_FEATURES,
    )

    monkeypatch.setenv("RECSTACK_FEATURES_DIR", str(tmp_path))
    objects = {type(o).__name__ + ":" + o.name: o
               for o in load_definitions(REPO_ROOT / "feature_repo")}
    v1 = objects["FeatureService:ranker_v1"]
    assert [f.name for p in v1.feature_view_projections for f in p.features] == (
        USER_FEATURES + ITEM_FEATURES)
    v2 = objects["FeatureService:ranker_v2"]
    names = [f.name for p in v2.feature_view_projections for f in p.features]
    assert sorted(names) == sorted(RANKER_V2_USER_FEATURES + RANKER_V2_ITEM_FEATURES
                                   + RANKER_V2_USER_CATEGORY_FEATURES)
    assert objects["FeatureView:user_category_features"].entities == ["user", "category"]
    for name, schema in V2_TABLES.items():
        view = objects.get(f"FeatureView:{name.removesuffix('.parquet')}")
        if view is not None:
            assert view.batch_source.path == str(tmp_path / name)
            assert [f.name for f in view.features] == [
                n for n in schema.names if n not in ("user_id", "item_id", "category",
                                                     "event_timestamp", "created")]


def test_backfill_verb_rejects_a_reversed_range_in_one_line() -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    done = CliRunner().invoke(app, ["backfill", "2026-01-03", "2026-01-01"])
    assert done.exit_code != 0 and "is after END" in done.output
    done = CliRunner().invoke(app, ["backfill", "--help"])
    assert done.exit_code == 0 and "START" in done.output


def test_profile_codes_may_be_unknown_but_not_below_that() -> None:
    from pipelines.tables import USER_FEATURES_V2_FILE, USER_FEATURES_V2_SCHEMA

    row = {f.name: [0] for f in USER_FEATURES_V2_SCHEMA}
    row.update(user_ctr_1d=[0.1], user_ctr_28d=[0.1], event_timestamp=[T], created=[T],
               user_country_code=[-1], user_device_code=[417])
    good = pa.table(row, schema=USER_FEATURES_V2_SCHEMA)
    assert check_table(USER_FEATURES_V2_FILE, good, USER_FEATURES_V2_SCHEMA).rows == 1
    bad = good.set_column(good.schema.get_field_index("user_country_code"),
                          USER_FEATURES_V2_SCHEMA.field("user_country_code"),
                          pa.array([-2], pa.int64()))
    with pytest.raises(FeatureTableError, match="user_country_code below -1"):
        check_table(USER_FEATURES_V2_FILE, bad, USER_FEATURES_V2_SCHEMA)


def test_an_empty_fresh_list_passes_an_empty_feature_table_does_not() -> None:
    from pipelines.tables import FRESH_SCHEMA
    from recstack.schemas import FRESH_FILE

    assert check_table(FRESH_FILE, FRESH_SCHEMA.empty_table(), FRESH_SCHEMA).rows == 0
    with pytest.raises(FeatureTableError, match="empty"):
        check_table(USER_FEATURES_FILE, user_table().slice(0, 0), USER_FEATURES_SCHEMA)
