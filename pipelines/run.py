"""``recstack pipeline``: the feature pipeline (incremental), checks, then Feast apply + materialize.

One run, in order (each step only when the previous one succeeded):

0. **quarantine** the lake partitions outside its plausible day range (``pipelines.lakecheck``):
   moved to ``<lake>/quarantine/run=<run id>/``, counted in the result and the manifest;
1. **plan** from ``<features_dir>/manifest.json``: the lake days that are new or changed since
   the last committed run, hence the snapshot days to recompute (the first changed day to the
   last lake day; a backfill names them); nothing changed -> nothing to compute;
2. **compute** those days with the Beam pipeline into a staging directory
   (``<features_dir>/_staging/<run>``); it reads the lake days the windows need;
   rows it rejects go to ``<features_dir>/dead_letter/features/run=<run id>/`` (Parquet, kept
   whatever happens next);
3. **validate** the staged tables (nulls, negative counts, CTR in [0, 1], row-count swing of the
   newest day vs the last good run, ``settings.pipeline.max_row_swing``); a failure moves the
   staging to ``_rejected/<run>``, leaves the tables, the manifest and the online store as they
   were, and raises :class:`~pipelines.materialize.FeatureTableError` saying what failed;
4. **commit**: each recomputed day's partition replaces the old one (other days are untouched),
   then the manifest records the run;
5. **materialize**: ``feast apply``, then ``materialize_incremental`` (or a targeted rewrite when
   already-materialized days were recomputed).

Running it twice is the same as running it once (the second run finds nothing new), and running
it day by day gives the same tables as one run over all days (a snapshot reads only the past).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import features, lakecheck, partitions
from pipelines import manifest as manifests
from pipelines.features import LakeError
from pipelines.materialize import (
    FeatureTableError,
    apply_and_materialize,
    check_swing,
    newest_partition_rows,
    validate_tables,
)
from pipelines.seen import load_seen_history
from pipelines.tables import FRESH_FILE, PARTITIONED_TABLES
from recstack.schemas import LABELS_FILE, POPULAR_FILE
from recstack.settings import Settings

if TYPE_CHECKING:
    from pipelines.materialize import MaterializeResult

logger = logging.getLogger(__name__)

# Impressions of the day before the first recomputed day are relabelled: a click after midnight
# lands in the next day's partition, and its impression's label must still see it.
LABEL_LOOKBACK_DAYS = 1
STAGING_DIR = "_staging"
REJECTED_DIR = "_rejected"
LAYOUT_VERSION = 2  # day-partitioned tables; a manifest of another layout rebuilds everything


@dataclass(frozen=True)
class RunPlan:
    """What a run recomputes: snapshot days ``first..last``; ``mode`` says why."""

    mode: str  # "full" | "incremental" | "backfill" | "up_to_date"
    first: dt.date | None
    last: dt.date | None
    changed: list[dt.date]


def feature_argv(settings: Settings, beam_args: Sequence[str] = ()) -> list[str]:
    """``pipelines.features.run`` arguments for ``settings``; ``beam_args`` are appended (so a
    ``--runner`` there overrides ``settings.pipeline.runner``)."""
    argv = [
        "--lake", str(settings.lake_dir),
        "--out", str(settings.features_dir),
        "--window-days", str(settings.pipeline.window_days),
        "--popular-size", str(settings.pipeline.popular_size),
    ]
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        argv += ["--runner", settings.pipeline.runner]
    return argv + list(beam_args)


def table_params(settings: Settings) -> dict[str, Any]:
    """The parameters the tables are a function of; a change rebuilds every day."""
    return {"layout": LAYOUT_VERSION, "window_days": settings.pipeline.window_days,
            "popular_size": settings.pipeline.popular_size}


def plan_run(
    lake: dict[dt.date, str], state: manifests.Manifest, params: dict[str, Any],
    backfill: tuple[dt.date, dt.date] | None = None,
) -> RunPlan:
    """The snapshot days to recompute, from the lake's day fingerprints and the manifest.

    Incremental: from the first new or changed lake day to the last lake day (a changed day
    changes every later snapshot whose window contains it). Backfill: exactly ``backfill``.
    """
    if not lake:
        raise LakeError("no event partitions in the lake (run `recstack simulate` first)")
    if backfill is not None:
        first, last = backfill
        if first > last:
            raise ValueError(f"backfill start {first} is after its end {last}")
        return RunPlan("backfill", first, last, [d for d in lake if first <= d <= last])
    changed = manifests.changed_days(lake, state, params)
    if not changed:
        return RunPlan("up_to_date", None, None, [])
    mode = "incremental" if state.processed and state.params == params else "full"
    first = changed[0] if mode == "incremental" else min(lake)
    return RunPlan(mode, first, max(lake), changed)


@dataclass(frozen=True)
class LakePlan:
    """The run's plan, the lake day fingerprints it was made from, and the partitions moved to
    the quarantine because they were outside the lake's plausible day range."""

    plan: RunPlan
    fingerprints: dict[dt.date, str]
    quarantine: lakecheck.LakeReport


def plan_lake(lake_dir: Path, state: manifests.Manifest, params: dict[str, Any],
              backfill: tuple[dt.date, dt.date] | None = None, *,
              rule: lakecheck.PlausibleRule, tag: str) -> LakePlan:
    """Quarantine the lake's out-of-range partitions (under ``quarantine/<tag>``), then plan.

    Without this, one partition written by a hostile client (``date=4324-11-02``) made the plan
    span every day from the lake's first to that one (pipelines/lakecheck.py has the rule).
    A backfill must lie within the plausible range.
    """
    report = lakecheck.scan(lake_dir, rule)
    moved = lakecheck.quarantine(lake_dir, report, tag, frozenset({lakecheck.OUT_OF_RANGE}))
    if backfill is not None and report.plausible is not None:
        low, high = report.plausible
        if backfill[0] < low or backfill[1] > high:
            raise ValueError(f"backfill {backfill[0]}..{backfill[1]} leaves the lake's "
                             f"plausible range {low}..{high}")
    lake = {d: partitions.fingerprint(files)
            for d, files in partitions.lake_partitions(str(lake_dir)).items()}
    return LakePlan(plan_run(lake, state, params, backfill), lake, moved)


def resolve_max_row_swing(settings: Settings, value: float | None | str) -> float | None:
    """The swing threshold a run uses: ``"settings"`` -> ``settings.pipeline.max_row_swing``
    (``RECSTACK_PIPELINE__MAX_ROW_SWING``), a number -> itself (the CLI flag); None or 0 -> no
    check."""
    if value == "settings":
        value = settings.pipeline.max_row_swing
    if isinstance(value, str) or (value is not None and value < 0):
        raise ValueError(f"max_row_swing: a number >= 0, None or 'settings', not {value!r}")
    return float(value) if value else None


def run_all(
    settings: Settings,
    beam_args: Sequence[str] = (),
    *,
    backfill: tuple[dt.date, dt.date] | None = None,
    max_row_swing: float | None | str = "settings",
) -> dict[str, Any]:
    """Lake -> feature tables (Beam, only what changed) -> checks -> Feast registry + Redis.

    In: ``settings.lake_dir``; ``beam_args`` go to the Beam runner; ``backfill`` = (first, last)
    snapshot days to rebuild; ``max_row_swing`` = tolerated relative change of the newest day's
    row count per table vs the last good run (None or 0: no swing check; default:
    ``settings.pipeline.max_row_swing``). Out: the tables under ``settings.features_dir``, its
    ``manifest.json``, the run's dead letters, the definitions applied and Redis up to date.
    Returns ``{"plan": {...}, "quarantine": {"partitions", "rows", "days", "plausible",
    "path"}, "run_id": str, "counters": {...}, "dead_letter": {"rows": n,
    "by_reason": {reason: n}, "by_step": {step: n}, "path": dir}, "swing": {...}, "tables":
    {file: rows}, "materialized": {view: rows}, "modes": {view: how}, "interval": [start,
    end], "seconds": {...}}`` and, with a seen policy on (``settings.seen``), ``"seen": {"users",
    "items", "seconds"}`` (the users' seen history written from the lake). Raises ``FeatureTableError`` when a check fails (nothing committed,
    nothing materialized), ``LakeError`` for a missing or unreadable lake.
    """
    max_row_swing = resolve_max_row_swing(settings, max_row_swing)
    features_dir = settings.features_dir
    _drop_single_file_tables(features_dir)
    state = manifests.load(str(features_dir))
    params = table_params(settings)
    run_id = features.new_run_id()
    lake_plan = plan_lake(settings.lake_dir, state, params, backfill,
                          rule=lakecheck.PlausibleRule.from_settings(settings.pipeline),
                          tag=f"run={run_id}")
    plan = lake_plan.plan
    out: dict[str, Any] = {"plan": _plan_summary(plan),
                           "quarantine": quarantine_summary(lake_plan.quarantine)}
    seconds: dict[str, float] = {}

    rewritten_from = None
    if plan.mode == "up_to_date":
        if out["quarantine"]["partitions"]:
            state.record_run(run=run_id, mode=plan.mode, quarantine=out["quarantine"],
                             status="up_to_date")
            manifests.save(str(features_dir), state)
        out["counters"], out["swing"] = {}, {}
        out["dead_letter"] = dead_letter_summary({}, None)
    else:
        computed = _compute_and_commit(settings, beam_args, lake_plan, state, params, run_id,
                                       max_row_swing, out["quarantine"])
        out.update(computed.report)
        seconds["features"] = computed.features_seconds
        rewritten_from = computed.rewritten_from

    materialized = apply_and_materialize(settings, rewritten_from=rewritten_from)
    out.update(_record_materialized(features_dir, state, materialized, seconds))
    if settings.seen.policy != "none":
        out["seen"] = load_seen_history(settings)
    return out


@dataclass(frozen=True)
class _Computed:
    """What computing and committing the plan's days adds to the run's result."""

    report: dict[str, Any]  # run_id, counters, dead_letter, swing
    features_seconds: float  # the Beam run
    rewritten_from: dt.datetime | None  # first snapshot to rewrite online (None: incremental)


def _compute_and_commit(
    settings: Settings, beam_args: Sequence[str], lake_plan: LakePlan,
    state: manifests.Manifest, params: dict[str, Any], run_id: str,
    max_row_swing: float | None, quarantine: dict[str, Any],
) -> _Computed:
    """Steps 2-4 of the module docstring: the Beam run into staging, its checks, the commit,
    and the manifest's record of the run (saved)."""
    plan, features_dir = lake_plan.plan, settings.features_dir
    assert plan.first is not None and plan.last is not None
    staging = features_dir / STAGING_DIR / run_id
    dead_dir = features.dead_letter_dir(str(features_dir), run_id)
    started = time.perf_counter()
    result = features.run(_staged_argv(settings, beam_args, plan, run_id, staging, dead_dir))
    counters = features.counters(result)
    report: dict[str, Any] = {"run_id": run_id, "counters": counters,
                              "dead_letter": dead_letter_summary(counters, dead_dir)}
    if report["dead_letter"]["rows"]:
        logger.warning("%d rows dead-lettered (%s) to %s", report["dead_letter"]["rows"],
                       report["dead_letter"]["by_reason"], dead_dir)
    features_seconds = round(time.perf_counter() - started, 2)
    report["swing"] = _validate_staged(staging, state, max_row_swing, run_id, features_dir)
    _commit(staging, features_dir, plan)
    _advance_processed(state, plan, lake_plan.fingerprints, params, features_dir)
    rewritten_from = _rewritten_from(state, plan.first)
    state.record_run(run=run_id, mode=plan.mode, first_day=_iso(plan.first),
                     last_day=_iso(plan.last), counters=counters, swing=report["swing"],
                     dead_letter=report["dead_letter"], quarantine=quarantine,
                     status="committed")
    manifests.save(str(features_dir), state)
    return _Computed(report, features_seconds, rewritten_from)


def _staged_argv(settings: Settings, beam_args: Sequence[str], plan: RunPlan, run_id: str,
                 staging: Path, dead_dir: str) -> list[str]:
    """:func:`feature_argv` writing into ``staging``, for the plan's days, with the run's id
    and dead-letter directory."""
    assert plan.first is not None and plan.last is not None
    argv = feature_argv(settings, beam_args)
    argv[argv.index("--out") + 1] = str(staging)
    argv += ["--first-day", plan.first.isoformat(), "--last-day", plan.last.isoformat(),
             "--label-lookback-days", str(0 if plan.mode == "backfill" else
                                          LABEL_LOOKBACK_DAYS),
             "--run-id", run_id, "--dead-letter-dir", dead_dir]
    return argv


def _advance_processed(state: manifests.Manifest, plan: RunPlan, lake: dict[dt.date, str],
                       params: dict[str, Any], features_dir: Path) -> None:
    """Mark the plan's changed days processed and the newest committed day the last good one.

    A backfill that stops before the last lake day leaves the later snapshots built from the
    old data: its days stay "unprocessed", so the next daily run recomputes from them.
    """
    assert plan.last is not None
    if plan.mode != "backfill" or plan.last >= max(lake):
        state.params = params
        for day in plan.changed:
            state.processed[day.isoformat()] = lake[day]
        state.last_good_day, state.last_good_rows = newest_partition_rows(features_dir)


def _rewritten_from(state: manifests.Manifest, first: dt.date) -> dt.datetime | None:
    """The first recomputed snapshot's time when it is already in the online store (so the
    materialization rewrites from there), else None."""
    if state.materialized_until is None:
        return None
    first_t = _snapshot_time(first)
    return first_t if first_t <= dt.datetime.fromisoformat(state.materialized_until) else None


def _record_materialized(features_dir: Path, state: manifests.Manifest,
                         materialized: MaterializeResult,
                         seconds: dict[str, float]) -> dict[str, Any]:
    """Record how far the online store is materialized (manifest saved); the result's part
    about step 5."""
    state.materialized_until = materialized.end.isoformat()
    manifests.save(str(features_dir), state)
    return {
        "tables": {name: t.rows for name, t in materialized.tables.items()},
        "materialized": materialized.rows,
        "modes": materialized.modes,
        "interval": [materialized.start.isoformat(), materialized.end.isoformat()],
        "seconds": {**seconds, "apply": round(materialized.apply_seconds, 2),
                    "materialize": round(materialized.materialize_seconds, 2)},
    }


def _plan_summary(plan: RunPlan) -> dict[str, Any]:
    """The result's ``plan``: the mode, the days recomputed and the lake days that changed."""
    return {"mode": plan.mode, "first_day": _iso(plan.first), "last_day": _iso(plan.last),
            "changed_days": [d.isoformat() for d in plan.changed]}


def _validate_staged(staging: Path, state: manifests.Manifest, max_row_swing: float | None,
                     run_id: str, features_dir: Path) -> dict[str, float]:
    """The staged tables pass every check, or the staging is set aside and the error raised."""
    try:
        validate_tables(staging)
        _day, rows = newest_partition_rows(staging)
        return check_swing(rows, state.last_good_rows, max_row_swing)
    except FeatureTableError as exc:
        rejected = features_dir / REJECTED_DIR / run_id
        rejected.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(rejected))
        state.record_run(run=run_id, status="rejected", error=str(exc))
        manifests.save(str(features_dir), state)
        raise FeatureTableError(
            f"{exc} (run {run_id} rejected: tables and online store unchanged; its output is in "
            f"{rejected})") from exc


def _commit(staging: Path, features_dir: Path, plan: RunPlan) -> None:
    """Move the staged days into the tables (replacing those days only), then the single files."""
    assert plan.first is not None and plan.last is not None
    for name in PARTITIONED_TABLES:
        first = plan.first
        if name == LABELS_FILE and plan.mode != "backfill":
            first = plan.first - dt.timedelta(days=LABEL_LOOKBACK_DAYS)
        if (staging / name).exists():  # the v2 tables exist only with an item catalogue
            partitions.replace_partitions(str(staging / name), str(features_dir / name), first,
                                          plan.last)
    for name in (POPULAR_FILE, FRESH_FILE):
        if (staging / name).exists():
            (staging / name).replace(features_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


def dead_letter_summary(counters: dict[str, int], path: str | None) -> dict[str, Any]:
    """The run's dead letters from its counters: rows, per reason, per step, and where."""
    return {
        "rows": counters.get("rows_dead_letter", 0),
        # bad rows of earlier partitions re-read for the windows, reported by an earlier run
        "reread_not_reported": counters.get("rows_bad_reread", 0),
        "by_reason": {k.removeprefix("bad_"): v for k, v in counters.items()
                      if k.startswith("bad_") and v},
        "by_step": {k.removeprefix("dead_letter_"): v for k, v in counters.items()
                    if k.startswith("dead_letter_") and v},
        "path": path,
    }


def quarantine_summary(report: lakecheck.LakeReport) -> dict[str, Any]:
    """What a run's plan moved to the quarantine: partitions, rows, days, where, the range."""
    return {
        "partitions": len(report.findings),
        "rows": report.suspicious_rows,
        "days": [f.day.isoformat() for f in report.findings if f.day is not None],
        "plausible": [d.isoformat() for d in report.plausible] if report.plausible else None,
        "path": report.quarantined_to,
    }


def _drop_single_file_tables(features_dir: Path) -> None:
    """Tables of the single-file layout (before day partitions) are removed; with no manifest
    of this layout the next run rebuilds every day."""
    for name in PARTITIONED_TABLES:
        if (features_dir / name).is_file():
            logger.info("removing %s of the single-file layout; rebuilding", features_dir / name)
            (features_dir / name).unlink()


def _snapshot_time(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc)


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None
