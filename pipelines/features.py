"""The feature pipeline (Apache Beam): event lake -> daily feature snapshots, popular list, labels.

In: ``<lake>/events/date=YYYY-MM-DD/part-*.parquet`` (EVENT_SCHEMA). Out, under ``--out``, one
Parquet file each (names from ``recstack.schemas``, columns in ``pipelines.tables``):

- ``user_features.parquet`` / ``item_features.parquet``: one row per (entity, lake day) with
  ``event_timestamp`` = midnight UTC after the day, aggregating events in the ``--window-days``
  before it (point-in-time correct: no row sees an event at or after its timestamp);
- ``popular.parquet``: the most clicked items of the last lake day;
- ``labels.parquet``: one row per impression, label 1 when the same request clicked the item;
- ``dead_letter/events.jsonl``: rows that failed validation, with the reason.

Usage: ``python -m pipelines.features --lake var/lake --out var/features [beam flags]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.tables import (
    ITEM_FEATURES_SCHEMA,
    LABELS_SCHEMA,
    POPULAR_SCHEMA,
    USER_FEATURES_SCHEMA,
)
from pipelines.transforms import (
    DailyCounts,
    DailySnapshots,
    DedupeEvents,
    ImpressionLabels,
    PopularItems,
    epoch_day,
    from_epoch_day,
)
from pipelines.validate import DEAD_LETTER, NAMESPACE, ArrowBatchToRows, ValidateEvent
from recstack import lake
from recstack.schemas import (
    DEAD_LETTER_DIR,
    ITEM_FEATURES,
    ITEM_FEATURES_FILE,
    LABELS_FILE,
    POPULAR_FILE,
    USER_FEATURES,
    USER_FEATURES_FILE,
)

logger = logging.getLogger(__name__)

DEAD_LETTER_FILE = "events.jsonl"


class LakeError(ValueError):
    """The lake cannot be read: missing, empty, or a file that is not Parquet."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.features",
        description="Event lake -> daily user/item feature snapshots, popular items, labels. "
        "Unknown flags are passed to Beam (e.g. --runner, --direct_num_workers).",
    )
    parser.add_argument("--lake", required=True, type=Path, help="lake directory (has events/)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the tables")
    parser.add_argument("--window-days", type=int, default=7,
                        help="aggregation window of the *_7d features, days (default 7)")
    parser.add_argument("--days", type=int, default=None,
                        help="snapshot (and label) only the last N lake days (default: all)")
    parser.add_argument("--popular-size", type=int, default=500,
                        help="items in the popular list (default 500)")
    parser.add_argument("--prior-ctr", type=float, default=0.05,
                        help="prior CTR of the smoothed CTR features (default 0.05)")
    parser.add_argument("--prior-weight", type=float, default=20.0,
                        help="pseudo-impressions behind the prior (default 20)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, checked, and the rest (Beam's runner flags)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if args.window_days < 1:
        parser.error(f"--window-days must be >= 1, got {args.window_days}")
    if args.days is not None and args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    if args.popular_size < 1:
        parser.error(f"--popular-size must be >= 1, got {args.popular_size}")
    if not 0.0 <= args.prior_ctr <= 1.0 or args.prior_weight <= 0:
        parser.error("--prior-ctr must be in [0, 1] and --prior-weight > 0")
    return args, beam_args


def plan_days(lake_dir: Path, window_days: int, days: int | None) -> tuple[list[dt.date], int, int]:
    """(lake days to read, first snapshot epoch day, last snapshot epoch day).

    Snapshots cover every calendar day from the first (or the N-th last) lake day to the last;
    the days read reach ``window_days`` further back, for the windows and their expiries.
    """
    lake_days = lake.list_days(lake_dir)
    if not lake_days:
        raise LakeError(f"no event partitions under {Path(lake_dir) / lake.EVENTS} "
                        "(run `recstack simulate` first)")
    last = epoch_day(lake_days[-1])
    first = epoch_day(lake_days[0]) if days is None else max(epoch_day(lake_days[0]),
                                                              last - days + 1)
    read = [d for d in lake_days if epoch_day(d) >= first - window_days]
    return read, first, last


def check_files(files: list[Path]) -> None:
    """Fail with the file's name (not a Beam stack trace) when a part file is not Parquet."""
    if not files:
        raise LakeError("the lake has day partitions but no part-*.parquet files")
    for path in files:
        try:
            pq.read_metadata(path)
        except Exception as exc:  # noqa: BLE001 - any reader error means the same thing here
            raise LakeError(f"{path} is not a readable Parquet file: {exc}") from exc


class ReadLakeEvents(beam.PTransform):
    """Parquet part files -> raw row dicts (one per event, every EVENT column)."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__()
        self.files = [str(f) for f in files]

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "ReadBatches" >> beam.io.ReadAllFromParquetBatched()
            | "ToRows" >> beam.ParDo(ArrowBatchToRows())
        )


class WriteTable(beam.PTransform):
    """Rows -> exactly one Parquet file at ``path`` (Feast's FileSource reads a single file)."""

    def __init__(self, path: Path, schema, counter: str) -> None:
        super().__init__()
        self.path = path
        self.schema = schema
        self.counter = counter

    def expand(self, rows):
        counter = beam.metrics.Metrics.counter(NAMESPACE, self.counter)
        return (
            rows
            | "Count" >> beam.Map(_inc, counter)
            | "Write" >> beam.io.WriteToParquet(
                str(self.path), self.schema, num_shards=1, shard_name_template="",
                codec="snappy", record_batch_size=10_000)
        )


def _inc(element, counter):
    counter.inc()
    return element


def build(pipeline: beam.Pipeline, args: argparse.Namespace, created: dt.datetime) -> None:
    """Add every step of the feature pipeline to ``pipeline`` (see the module docstring)."""
    read_days, first, last = plan_days(args.lake, args.window_days, args.days)
    files = lake.partition_files(args.lake, read_days)
    check_files(files)
    out: Path = args.out
    logger.info("features: %d files, %s..%s, snapshots %s..%s", len(files), read_days[0],
                read_days[-1], from_epoch_day(first), from_epoch_day(last))

    validated = (
        pipeline
        | "ReadLake" >> ReadLakeEvents(files)
        | "Validate" >> beam.ParDo(ValidateEvent()).with_outputs(DEAD_LETTER, main="events")
    )
    (
        validated[DEAD_LETTER]
        | "DeadLetterJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
        | "WriteDeadLetter" >> beam.io.WriteToText(
            str(out / DEAD_LETTER_DIR / DEAD_LETTER_FILE), num_shards=1, shard_name_template="")
    )
    events = validated.events | "Dedupe" >> DedupeEvents()

    snapshot_args = dict(window_days=args.window_days, first=first, last=last,
                         prior_ctr=args.prior_ctr, prior_weight=args.prior_weight, created=created)
    user_days = events | "UserDailyCounts" >> DailyCounts("user_id")
    item_days = events | "ItemDailyCounts" >> DailyCounts("item_id")
    (
        user_days
        | "UserSnapshots" >> DailySnapshots("user_id", "user", USER_FEATURES, **snapshot_args)
        | "WriteUserFeatures" >> WriteTable(out / USER_FEATURES_FILE, USER_FEATURES_SCHEMA,
                                            "rows_user_features")
    )
    (
        item_days
        | "ItemSnapshots" >> DailySnapshots("item_id", "item", ITEM_FEATURES, **snapshot_args)
        | "WriteItemFeatures" >> WriteTable(out / ITEM_FEATURES_FILE, ITEM_FEATURES_SCHEMA,
                                            "rows_item_features")
    )
    (
        item_days
        | "Popular" >> PopularItems(day=last, size=args.popular_size)
        | "WritePopular" >> WriteTable(out / POPULAR_FILE, POPULAR_SCHEMA, "rows_popular")
    )
    (
        events
        | "Labels" >> ImpressionLabels(first=first)
        | "WriteLabels" >> WriteTable(out / LABELS_FILE, LABELS_SCHEMA, "rows_labels")
    )


def run(argv: list[str] | None = None) -> PipelineResult:
    """Run the feature pipeline to completion; returns Beam's result (see :func:`counters`).

    In: ``argv`` = our flags (``--lake``, ``--out``, ``--window-days``, ``--days``,
    ``--popular-size``, ``--prior-ctr``, ``--prior-weight``) plus Beam runner flags (DirectRunner
    by default). Out: the tables listed in the module docstring under ``--out``. Raises
    :class:`LakeError` when the lake is missing, empty or unreadable.
    """
    args, beam_args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, args, created)
    result = pipeline.run()
    result.wait_until_finish()
    logger.info("features: %s", counters(result))
    return result


def counters(result: PipelineResult) -> dict[str, int]:
    """The pipeline's counters by name: rows_read, rows_valid, rows_bad, bad_<reason>,
    events_unique, rows_user_features, rows_item_features, rows_popular, rows_labels."""
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in found:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or 0)
    for name in ("rows_read", "rows_valid", "rows_bad", "events_unique", "rows_user_features",
                 "rows_item_features", "rows_popular", "rows_labels"):
        totals.setdefault(name, 0)
    return dict(sorted(totals.items()))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: runs :func:`run`, prints the counters as JSON; 2 on a bad lake."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(argv)
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counters(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
