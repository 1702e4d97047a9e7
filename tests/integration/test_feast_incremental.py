"""Incremental, idempotent runs, backfill and the row-count swing check, into a real Redis."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.run import run_all
from pipelines.manifest import MANIFEST_FILE
from pipelines.materialize import FeatureTableError
from recstack.featurestore import open_store
from recstack.schemas import (
    ITEM_FEATURES,
    ITEM_FEATURES_FILE,
    LABELS_FILE,
    POPULAR_FILE,
    USER_FEATURES,
    USER_FEATURES_FILE,
)
from recstack.settings import Settings
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

pytestmark = [pytest.mark.integration, pytest.mark.redis]

DAYS = [DAY1 + dt.timedelta(days=i) for i in range(4)]
TABLE_NAMES = (USER_FEATURES_FILE, ITEM_FEATURES_FILE, LABELS_FILE, POPULAR_FILE)


def _on(settings: Settings, port: int, project: str, home: str) -> Settings:
    """Settings on the test Redis with a project (and home) of their own."""
    return settings.model_copy(update={
        "home": settings.home.parent / home,
        "redis": settings.redis.model_copy(update={"port": port}),
        "feast": settings.feast.model_copy(update={"project": project}),
    })


def _day_events(i: int) -> list[dict]:
    """A few users and items a day; on day 2 a click lands after midnight (in day 3's partition)."""
    day = DAYS[i]
    rows = []
    for user in range(1, 4 + i):
        rows += shown_and_clicked(at(day, 9 + user), user, 100 + (user + i) % 3, f"r{i}-{user}",
                                  clicked=(user + i) % 2 == 0, position=user % 3)
    late = shown_and_clicked(at(day, 23, 59 if i == 1 else 0), 1, 105, f"late{i}", clicked=True)
    return rows + late


def _snapshot(features_dir: Path) -> dict[str, list[dict]]:
    return {name: pq.read_table(features_dir / name).to_pylist() for name in TABLE_NAMES}


def _online(s: Settings, users=(1, 2, 3, 4, 5, 6), items=(100, 101, 102, 105)) -> dict:
    store = open_store(s)
    u = store.get_online_features(features=[f"user_features:{f}" for f in USER_FEATURES],
                                  entity_rows=[{"user_id": i} for i in users]).to_dict()
    it = store.get_online_features(features=[f"item_features:{f}" for f in ITEM_FEATURES],
                                   entity_rows=[{"item_id": i} for i in items]).to_dict()
    return {"users": u, "items": it}


def test_running_twice_is_running_once_and_day_by_day_is_all_at_once(settings, redis_server):
    whole = _on(settings, redis_server, "inc_whole", "whole")
    for i in range(4):
        write_lake(whole.lake_dir, _day_events(i), batch_key=f"d{i}")
    first = run_all(whole, max_row_swing=None)
    assert first["plan"]["mode"] == "full" and first["materialized"]["user_features"] == 6
    tables = _snapshot(whole.features_dir)
    online = _online(whole)

    again = run_all(whole, max_row_swing=None)
    assert again["plan"]["mode"] == "up_to_date" and again["counters"] == {}
    assert _snapshot(whole.features_dir) == tables
    assert _online(whole) == online

    daily = _on(settings, redis_server, "inc_daily", "daily")
    modes = []
    for i in range(4):
        write_lake(daily.lake_dir, _day_events(i), batch_key=f"d{i}")
        result = run_all(daily, max_row_swing=None)
        modes.append((result["plan"]["mode"], result["plan"]["first_day"]))
        # The new day, and the next one (holding the click after midnight), are new.
        assert result["plan"]["changed_days"][0] == DAYS[i].isoformat()
    assert modes == [("full", DAYS[0].isoformat())] + [
        ("incremental", DAYS[i].isoformat()) for i in range(1, 4)]
    # Day 2's run wrote day 3's partition (the click after midnight), so day 3's run rewrote an
    # already materialized snapshot; day 4's run only appended.
    assert result["modes"] == {"user_features": "incremental", "item_features": "incremental"}
    assert _snapshot(daily.features_dir) == tables
    assert _online(daily) == online
    state = json.loads((daily.features_dir / MANIFEST_FILE).read_text())
    assert sorted(state["processed"]) == [d.isoformat() for d in DAYS]
    assert [r["mode"] for r in state["runs"]] == ["full", "incremental", "incremental",
                                                 "incremental"]


def test_late_data_and_backfill_rebuild_the_days_they_touch(settings, redis_server) -> None:
    s = _on(settings, redis_server, "inc_backfill", "backfill")
    for i in range(4):
        write_lake(s.lake_dir, _day_events(i), batch_key=f"d{i}")
    run_all(s, max_row_swing=None)
    users = s.features_dir / USER_FEATURES_FILE
    before = {p.name: p.read_bytes() for p in users.iterdir()}
    clicks_before = _online(s, users=[9])["users"]["user_clicks_7d"]
    assert clicks_before == [None]

    # Late events of day 2 for a new user 9 (a click on item 100).
    write_lake(s.lake_dir, shown_and_clicked(at(DAYS[1], 15), 9, 100, "late-r", clicked=True),
               batch_key="late")
    back = run_all(s, backfill=(DAYS[1], DAYS[1]), max_row_swing=None)
    assert back["plan"]["mode"] == "backfill"
    after = {p.name: p.read_bytes() for p in users.iterdir()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == [f"part-{DAYS[1]}.parquet"]  # exactly the named day, history untouched
    day2 = pq.read_table(users / f"part-{DAYS[1]}.parquet").to_pylist()
    assert [r["user_clicks_7d"] for r in day2 if r["user_id"] == 9] == [1]

    # The next daily run sees that day 2 changed and recomputes days 2..4; the online store
    # gets the rewritten newest snapshot although its timestamp is not newer than the stored one.
    daily = run_all(s, max_row_swing=None)
    assert daily["plan"]["mode"] == "incremental"
    assert daily["plan"]["first_day"] == DAYS[1].isoformat()
    assert daily["modes"]["user_features"] == "rewrite"
    assert _online(s, users=[9])["users"]["user_clicks_7d"] == [1]


def test_a_row_count_swing_stops_the_run_and_the_online_store_keeps_its_values(
    settings, redis_server
) -> None:
    s = _on(settings, redis_server, "inc_swing", "swing")
    for i in range(2):
        write_lake(s.lake_dir, _day_events(i), batch_key=f"d{i}")
    run_all(s, max_row_swing=None)
    online_before = _online(s, users=range(1, 60))
    tables_before = _snapshot(s.features_dir)
    manifest_before = json.loads((s.features_dir / MANIFEST_FILE).read_text())

    # Day 3 brings 50 users at once: the users table's newest day grows from 4 to ~54 rows.
    burst = [row for u in range(10, 60)
             for row in shown_and_clicked(at(DAYS[2], 12), u, 100, f"b{u}", clicked=True)]
    write_lake(s.lake_dir, _day_events(2) + burst, batch_key="d2")
    assert s.pipeline.max_row_swing == 0.5  # the setting applies when no flag is given
    with pytest.raises(FeatureTableError, match=r"row-count swing beyond 50%.*user_features"
                       r"\.parquet: 4 -> \d+ rows") as failure:
        run_all(s)
    assert "online store unchanged" in str(failure.value)
    assert _online(s, users=range(1, 60)) == online_before
    assert _snapshot(s.features_dir) == tables_before
    manifest_after = json.loads((s.features_dir / MANIFEST_FILE).read_text())
    assert manifest_after["processed"] == manifest_before["processed"]
    assert manifest_after["runs"][-1]["status"] == "rejected"

    # Accepted once the operator raises the threshold (the flag wins over a strict setting).
    strict = s.model_copy(update={"pipeline": s.pipeline.model_copy(
        update={"max_row_swing": 0.1})})
    run_all(strict, max_row_swing=20.0)
    assert _online(s, users=[59])["users"]["user_clicks_7d"] == [1]
