"""Register the Feast definitions and load the latest feature snapshots into Redis.

In: the tables ``pipelines.features`` wrote under ``settings.features_dir`` and the definitions
in ``settings.feast.repo_path``. Out: the Feast registry (``settings.feast_dir``) holds the
entities, views and the ``ranker_v1`` service; Redis holds each user's and item's latest
snapshot.

Definitions are applied with the Python SDK (``store.apply``), not the ``feast`` CLI in a
subprocess: no second interpreter start-up (the CLI took 4 s where the SDK took 0.3 s here, see
FIELD-NOTES), errors arrive as exceptions rather than exit codes and log text, and one process
env (set by ``open_store``) configures both steps. The definition files are loaded by path under
a fresh module name on every call, so their ``FileSource`` paths follow the current settings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from feast import Entity, FeatureService, FeatureView
from feast.data_source import DataSource
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from pipelines import partitions
from pipelines.tables import (
    EVENT_TIMESTAMP,
    FEATURE_TABLE_KEYS,
    ITEM_FEATURES_V2_FILE,
    PARTITIONED_TABLES,
    TABLES,
    USER_CATEGORY_FEATURES_FILE,
    USER_FEATURES_V2_FILE,
    V2_TABLES,
)
from recstack.feastlayout import decode_timestamp, ts_field
from recstack.featurestore import open_store
from recstack.schemas import (
    CATEGORICAL_FEATURES,
    FRESH_FILE,
    ITEM_FEATURE_VIEW,
    ITEM_FEATURE_VIEW_V2,
    ITEM_FEATURES_FILE,
    NO_PROFILE_CODE,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW,
    USER_FEATURE_VIEW_V2,
    USER_FEATURES_FILE,
)
from recstack.settings import Settings

logger = logging.getLogger(__name__)

VIEW_TABLES = {USER_FEATURE_VIEW: USER_FEATURES_FILE, ITEM_FEATURE_VIEW: ITEM_FEATURES_FILE}
# ranker_v2's views, materialized when the pipeline wrote their tables (it needs items.parquet).
V2_VIEW_TABLES = {
    USER_FEATURE_VIEW_V2: USER_FEATURES_V2_FILE,
    ITEM_FEATURE_VIEW_V2: ITEM_FEATURES_V2_FILE,
    USER_CATEGORY_FEATURE_VIEW: USER_CATEGORY_FEATURES_FILE,
}
# Join keys of each view's entities (feature_repo/definitions.py).
VIEW_JOIN_KEYS: dict[str, list[str]] = {
    USER_FEATURE_VIEW: ["user_id"], ITEM_FEATURE_VIEW: ["item_id"],
    USER_FEATURE_VIEW_V2: ["user_id"], ITEM_FEATURE_VIEW_V2: ["item_id"],
    USER_CATEGORY_FEATURE_VIEW: ["user_id", "category"],
}


def present_view_tables(features_dir: Path | str) -> dict[str, str]:
    """View -> table of every view whose table exists (v1 always counts: its absence is an
    error the checks report)."""
    present = dict(VIEW_TABLES)
    for view, table in V2_VIEW_TABLES.items():
        if partitions.list_partitions(str(Path(features_dir) / table)):
            present[view] = table
    return present


class FeatureTableError(ValueError):
    """A feature table is missing or fails a check; nothing was materialized."""


class MaterializeError(RuntimeError):
    """Feast could not apply the definitions or write to the online store."""


@dataclass
class TableSummary:
    """What the checks saw in one table."""

    rows: int
    entities: int | None = None  # distinct keys, for the feature tables
    first: dt.datetime | None = None  # min and max event_timestamp, for the feature tables
    last: dt.datetime | None = None


@dataclass
class MaterializeResult:
    """Rows written to the online store per view, the materialized interval, and timings."""

    rows: dict[str, int]  # view -> entities written (each entity's latest snapshot)
    start: dt.datetime
    end: dt.datetime
    apply_seconds: float
    materialize_seconds: float
    tables: dict[str, TableSummary] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # view -> full | incremental | rewrite

    @property
    def rows_materialized(self) -> int:
        return sum(self.rows.values())

    @property
    def seconds(self) -> float:
        return self.apply_seconds + self.materialize_seconds


# A catalogue that did not grow for a week has no fresh items: an empty list, not a failed run.
# (A 9-live-day drift experiment's daily run was rejected on its last two days for it.)
MAY_BE_EMPTY = frozenset({FRESH_FILE})


def validate_tables(features_dir: Path | str) -> dict[str, TableSummary]:
    """Check every table the pipeline writes; raise :class:`FeatureTableError` on the first
    failure. Checks: the table exists and has the expected columns, it is not empty (the fresh
    list may be), keys and
    timestamps have no nulls, counts are >= 0 and CTRs and shares lie in [0, 1]. A table is one
    file (popular, fresh) or a directory of day partitions (see ``pipelines.partitions``). The
    ranker_v2 tables are checked when they exist (all of them or none)."""
    summaries = {}
    checked = dict(TABLES)
    v2_present = [n for n in V2_TABLES if (Path(features_dir) / n).exists()]
    if v2_present:
        checked.update(V2_TABLES)
    for name, schema in checked.items():
        path = Path(features_dir) / name
        if not path.exists():
            raise FeatureTableError(f"{path} does not exist (run the feature pipeline first)")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any reader error means an unusable table
            raise FeatureTableError(f"{path} is not a readable Parquet table: {exc}") from exc
        summaries[name] = check_table(name, table, schema)
    return summaries


def check_table(name: str, table: pa.Table, schema: pa.Schema) -> TableSummary:
    """The checks of :func:`validate_tables` on one table already in memory."""
    missing = [c for c in schema.names if c not in table.column_names]
    if missing:
        raise FeatureTableError(f"{name}: missing columns {missing}")
    if table.num_rows == 0 and name not in MAY_BE_EMPTY:
        raise FeatureTableError(f"{name}: the table is empty")
    for f in schema:
        column = table[f.name]
        if not f.nullable and column.null_count:
            raise FeatureTableError(f"{name}: {column.null_count} nulls in {f.name}")
        if "_ctr" in f.name or f.name.endswith("_share_28d"):
            low, high = pc.min(column).as_py(), pc.max(column).as_py()
            if low < 0 or high > 1:
                raise FeatureTableError(f"{name}: {f.name} outside [0, 1] ({low}..{high})")
        elif f.name in CATEGORICAL_FEATURES:  # codes: NO_PROFILE_CODE is the only negative
            low = pc.min(column).as_py()
            if low is not None and low < NO_PROFILE_CODE:
                raise FeatureTableError(f"{name}: {f.name} below {NO_PROFILE_CODE} (min {low})")
        elif pa.types.is_integer(f.type) and f.name not in ("position",):
            low = pc.min(column).as_py()
            if low is not None and low < 0:
                raise FeatureTableError(f"{name}: negative values in {f.name} (min {low})")
    summary = TableSummary(rows=table.num_rows)
    key = FEATURE_TABLE_KEYS.get(name)
    if key is not None:
        summary.entities = len(pc.unique(table[key]))
        summary.first = pc.min(table[EVENT_TIMESTAMP]).as_py()
        summary.last = pc.max(table[EVENT_TIMESTAMP]).as_py()
    return summary


def newest_partition_rows(features_dir: Path | str) -> tuple[str | None, dict[str, int]]:
    """(newest snapshot day, rows of that day per partitioned table) under ``features_dir``.

    The reference and the subject of the row-count swing check.
    """
    rows: dict[str, int] = {}
    newest = None
    for name in PARTITIONED_TABLES:
        parts = partitions.list_partitions(str(Path(features_dir) / name))
        if parts:
            day = max(parts)
            rows[name] = pq.read_metadata(parts[day]).num_rows
            if name in FEATURE_TABLE_KEYS:
                newest = max(newest or day.isoformat(), day.isoformat())
    return newest, rows


def check_swing(rows: dict[str, int], reference: dict[str, int], max_swing: float | None
                ) -> dict[str, float]:
    """Relative change of each table's newest-day row count against ``reference`` (the last good
    run's); raise :class:`FeatureTableError` naming every table beyond ``max_swing`` (e.g. 0.5 =
    +-50%). No reference (first run) or ``max_swing`` None: nothing to compare, nothing fails."""
    swings = {}
    for name, n in rows.items():
        old = reference.get(name)
        if old:
            swings[name] = round((n - old) / old, 4)
    if max_swing is not None:
        bad = {k: v for k, v in swings.items() if abs(v) > max_swing}
        if bad:
            detail = ", ".join(f"{k}: {reference[k]} -> {rows[k]} rows ({v:+.0%})"
                               for k, v in bad.items())
            raise FeatureTableError(
                f"row-count swing beyond {max_swing:.0%} vs the last good run: {detail}")
    return swings


def load_definitions(repo_path: Path) -> list[Any]:
    """The Feast objects (entities, sources, views, services) defined in ``repo_path/*.py``.

    Each file is executed as a fresh module, so it reads the current environment.
    """
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    objects: list[Any] = []
    for path in sorted(Path(repo_path).glob("*.py")):
        if path.name.startswith(("_", "test_")):
            continue
        name = f"recstack_feature_repo_{path.stem}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise MaterializeError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in vars(module).values():
            if isinstance(value, kinds) and not any(value is o for o in objects):
                objects.append(value)
    if not objects:
        raise MaterializeError(f"no Feast definitions found in {repo_path}")
    return objects


def apply_and_materialize(
    settings: Settings, rewritten_from: dt.datetime | None = None
) -> MaterializeResult:
    """Check the feature tables, ``apply`` the definitions, bring Redis up to the newest snapshot.

    In: ``settings.features_dir`` (tables of ``pipelines.features``), ``settings.feast``,
    ``settings.redis``; ``rewritten_from``: the first snapshot time a run *rewrote* (late data,
    backfill) rather than appended, None for a pure append. Out: the registry and the online
    store updated; returns entities written per view and the seconds spent. Raises
    :class:`FeatureTableError` (nothing is applied or materialized) or :class:`MaterializeError`.

    A view materialized before gets ``materialize_incremental`` (Feast remembers where it
    stopped). A first materialization starts at the oldest snapshot (Feast's own default,
    now - ttl, would miss a simulated calendar). Rewritten snapshots need more: Feast's Redis
    store skips a row whose timestamp is not newer than the stored one, so the stored
    timestamps of the entities concerned are cleared first and the interval is materialized
    again (each entity gets its newest row).
    """
    tables = validate_tables(settings.features_dir)
    store = open_store(settings)
    started = time.perf_counter()
    objects = load_definitions(settings.feast.repo_path)
    try:
        store.apply(objects)
    except redis.exceptions.ConnectionError as exc:
        raise MaterializeError(f"Redis at {settings.redis.address}: {exc}") from exc
    applied = time.perf_counter()

    # check_table sets first/last on every feature table; Feast's file store includes both ends.
    views = present_view_tables(settings.features_dir)
    start = min(tables[t].first for t in views.values())  # type: ignore[type-var]
    end = max(tables[t].last for t in views.values())  # type: ignore[type-var]
    assert start is not None and end is not None
    modes: dict[str, str] = {}
    # Feast prints its progress to stdout; keep stdout for results (`recstack pipeline > r.json`).
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for view in views:
                done_until = store.get_feature_view(view).most_recent_end_time
                if done_until is None:
                    store.materialize(start, end, feature_views=[view])
                    modes[view] = "full"
                elif rewritten_from is not None and rewritten_from <= done_until:
                    reset_online_timestamps(store, settings, view, rewritten_from)
                    store.materialize(rewritten_from, end, feature_views=[view])
                    modes[view] = "rewrite"
                else:
                    store.materialize_incremental(end, feature_views=[view])
                    modes[view] = "incremental"
    except redis.exceptions.ConnectionError as exc:
        raise MaterializeError(
            f"cannot write to Redis at {settings.redis.address} "
            f"(is it running? `recstack up --services redis`): {exc}"
        ) from exc
    done = time.perf_counter()
    result = MaterializeResult(
        rows={view: tables[table].entities or 0 for view, table in views.items()},
        start=start,
        end=end,
        apply_seconds=applied - started,
        materialize_seconds=done - applied,
        tables=tables,
        modes=modes,
    )
    logger.info("materialized %s (%s) up to %s in %.1fs", result.rows, modes, end, result.seconds)
    return result


def reset_online_timestamps(store: Any, settings: Settings, view: str, since: dt.datetime) -> int:
    """Delete ``_ts:<view>`` of every entity with a snapshot at or after ``since``, so the next
    materialization may write rows no newer than those stored (see :func:`apply_and_materialize`).

    Uses Feast's Redis key layout (FIELD-NOTES: serialized entity key + project, one HASH per
    entity) through the online store's own client, so it works for a Redis Cluster too. The
    feature values stay until overwritten: readers never see a hole. Returns the keys touched.
    """
    keys = VIEW_JOIN_KEYS[view]
    path = Path(settings.features_dir) / {**VIEW_TABLES, **V2_VIEW_TABLES}[view]
    table = pq.read_table(path, columns=[*keys, EVENT_TIMESTAMP])
    recent = table.filter(pc.greater_equal(table[EVENT_TIMESTAMP], pa.scalar(
        since, table.schema.field(EVENT_TIMESTAMP).type)))
    entities = recent.select(keys).group_by(keys).aggregate([]).to_pylist()
    client = store._get_provider().online_store._get_client(store.config.online_store)
    version = store.config.entity_key_serialization_version
    field_name = f"_ts:{view}"
    for lo in range(0, len(entities), 1000):
        pipe = client.pipeline(transaction=False)
        for entity in entities[lo:lo + 1000]:
            entity_key = EntityKey(join_keys=keys,
                                   entity_values=[Value(int64_val=entity[k]) for k in keys])
            pipe.hdel(_redis_key(store.project, entity_key, version), field_name)
        pipe.execute()
    return len(entities)


# Entities sampled per view when checking the online store against the offline tables.
_SAMPLE_ENTITIES = 50


def online_store_gaps(settings: Settings) -> dict[str, str]:
    """View -> why the online store is behind the offline tables, for every view it is behind.

    Nothing materialized yet (no registry, or no view with a finished materialization) is no
    gap: the pipeline's own run materializes. Otherwise, per view, the entities of the newest
    offline snapshot (a sample) must hold that snapshot's timestamp in Redis: missing means a
    lost or new Redis (``empty``), older means Redis was restored from an older state.
    """
    if not (settings.feast_dir / "registry.db").exists():
        return {}
    store = open_store(settings)
    client = store._get_provider().online_store._get_client(store.config.online_store)
    version = store.config.entity_key_serialization_version
    gaps: dict[str, str] = {}
    for view, table_name in present_view_tables(settings.features_dir).items():
        path = Path(settings.features_dir) / table_name
        if not path.exists():
            continue
        try:
            if store.get_feature_view(view).most_recent_end_time is None:
                continue
        except Exception:  # noqa: BLE001 - a view the registry does not have: apply will add it
            continue
        newest, entities = _newest_snapshot_sample(path, VIEW_JOIN_KEYS[view])
        stored = _stored_timestamps(client, store.project, version, view, entities)
        missing = sum(ts is None for ts in stored)
        older = sum(ts is not None and ts < newest for ts in stored)
        if missing:
            gaps[view] = f"empty: {missing} of {len(stored)} sampled entities have no row"
        elif older:
            gaps[view] = f"older: {older} of {len(stored)} sampled entities predate {newest}"
    return gaps


def _newest_snapshot_sample(path: Path, keys: list[str]) -> tuple[dt.datetime, list[dict]]:
    table = pq.read_table(path, columns=[*keys, EVENT_TIMESTAMP])
    newest = pc.max(table[EVENT_TIMESTAMP])
    latest = table.filter(pc.equal(table[EVENT_TIMESTAMP], newest))
    rows = latest.select(keys).slice(0, _SAMPLE_ENTITIES).to_pylist()
    stamp = newest.as_py()
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)), rows


def _stored_timestamps(
    client: Any, project: str, version: int, view: str, entities: list[dict]
) -> list[dt.datetime | None]:
    """``_ts:<view>`` of each entity's online row (Feast's Redis layout), None where absent.

    The key is Feast's own, for the store's configured serialization version; the field and
    its decoding are the kernel codec's."""
    pipe = client.pipeline(transaction=False)
    for entity in entities:
        keys = list(entity)
        entity_key = EntityKey(join_keys=keys,
                               entity_values=[Value(int64_val=entity[k]) for k in keys])
        pipe.hget(_redis_key(project, entity_key, version), ts_field(view))
    return [decode_timestamp(raw) for raw in pipe.execute()]


def rematerialize(settings: Settings, views: list[str],
                  progress: Any = None) -> dict[str, float]:
    """Write the offline tables' rows of ``views`` into the online store again, over the whole
    interval they cover (a lost Redis starts empty; rows no newer than a stored one are skipped
    by Feast, so a partly filled store is completed, not duplicated). ``progress(view, i, n)``
    is called before each view. Returns seconds per view."""
    tables = validate_tables(settings.features_dir)
    store = open_store(settings)
    present = present_view_tables(settings.features_dir)
    seconds: dict[str, float] = {}
    with contextlib.redirect_stdout(sys.stderr):
        for i, view in enumerate(views):
            summary = tables[present[view]]
            if progress is not None:
                progress(view, i, len(views))
            started = time.perf_counter()
            store.materialize(summary.first, summary.last, feature_views=[view])
            seconds[view] = time.perf_counter() - started
            logger.info("re-materialized %s (%s entities) in %.1fs", view, summary.entities,
                        seconds[view])
    return seconds
