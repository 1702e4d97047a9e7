"""The feature pipeline (Apache Beam): event lake -> daily feature snapshots, popular list, labels.

In: ``<lake>/events/date=YYYY-MM-DD/part-*.parquet`` (EVENT_SCHEMA). Out, under ``--out`` (names
from ``recstack.schemas``, columns in ``pipelines.tables``, layout in ``pipelines.partitions``):

- ``user_features.parquet/`` / ``item_features.parquet/``: one file per snapshot day
  (``part-YYYY-MM-DD.parquet``), one row per (entity, day) with ``event_timestamp`` = midnight
  UTC after the day, aggregating events in the ``--window-days`` before it (point-in-time
  correct: no row sees an event at or after its timestamp);
- ``popular.parquet``: the most clicked items of the last snapshot day (one file);
- ``labels.parquet/``: one file per impression day, one row per impression, label 1 when the
  same request clicked the item;
- dead letters: one Parquet dataset per run,
  ``<out>/dead_letter/features/run=<run id>/part-*.parquet`` (``--dead-letter-dir`` puts it
  elsewhere; ``DEAD_LETTER_SCHEMA``: run id, step, reason, source file, event_id, the original
  row as JSON): rows that failed validation or sit in another day's partition, from the
  partitions of the snapshot days this run computes. Bad rows of the earlier partitions a run
  re-reads for its windows were reported by the run that first read them: they are only
  counted (``rows_bad_reread``). A run never writes into another run's directory (it refuses
  one that has files), so earlier runs' dead letters stay.

Only the snapshot days ``--first-day..--last-day`` (default: every lake day) are written, from
the lake days they need (``--window-days`` before them), so a daily run touches one new day.
Paths may be remote URIs (``gs://``, ``s3://``): files are listed, read and written through
``apache_beam.io.filesystems``.

Usage: ``python -m pipelines.features --lake var/lake --out var/features [beam flags]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines import partitions
from pipelines.tables import (
    DEAD_LETTER_SCHEMA,
    EVENT_TIMESTAMP,
    FRESH_FILE,
    FRESH_SCHEMA,
    ITEM_FEATURES_SCHEMA,
    ITEM_FEATURES_V2_FILE,
    ITEM_FEATURES_V2_SCHEMA,
    LABELS_SCHEMA,
    POPULAR_SCHEMA,
    USER_CATEGORY_FEATURES_FILE,
    USER_CATEGORY_FEATURES_SCHEMA,
    USER_FEATURES_SCHEMA,
    USER_FEATURES_V2_FILE,
    USER_FEATURES_V2_SCHEMA,
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
from pipelines.windows import (
    LONG_DAYS,
    EntitySnapshotsV2,
    FreshItems,
    ItemV2Rows,
    UserCategorySnapshots,
    UserV2Rows,
    catalogue_entry,
    profile_entry,
)
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

DEAD_LETTER_STAGE = "features"  # dead_letter/<stage>/: this pipeline's rejected rows


class LakeError(ValueError):
    """The lake cannot be read: missing, empty, or a file that is not Parquet."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.features",
        description="Event lake -> daily user/item feature snapshots, popular items, labels. "
        "Unknown flags are passed to Beam (e.g. --runner, --direct_num_workers).",
    )
    parser.add_argument("--lake", required=True, help="lake directory or URI (has events/)")
    parser.add_argument("--out", required=True, help="directory or URI for the tables")
    parser.add_argument("--window-days", type=int, default=7,
                        help="aggregation window of the *_7d features, days (default 7)")
    parser.add_argument("--days", type=int, default=None,
                        help="snapshot (and label) only the last N lake days (default: all)")
    parser.add_argument("--first-day", type=_date, default=None,
                        help="first snapshot day, YYYY-MM-DD (default: the first lake day)")
    parser.add_argument("--last-day", type=_date, default=None,
                        help="last snapshot day, YYYY-MM-DD (default: the last lake day)")
    parser.add_argument("--label-lookback-days", type=int, default=0,
                        help="also relabel the impressions of N days before --first-day, so "
                        "clicks that arrive after midnight reach them (default 0)")
    parser.add_argument("--items", default=None,
                        help="item catalogue (item_id, category, created_at) for the ranker_v2 "
                        "tables and the fresh list (default: <lake>/items.parquet; skipped when "
                        "it does not exist)")
    parser.add_argument("--users", default=None,
                        help="user profile (user_id, country, device) for the ranker_v2 user "
                        "table's profile codes (default: <lake>/users.parquet; codes are -1 "
                        "when it does not exist)")
    parser.add_argument("--popular-size", type=int, default=500,
                        help="items in the popular list (default 500)")
    parser.add_argument("--prior-ctr", type=float, default=0.05,
                        help="prior CTR of the smoothed CTR features (default 0.05)")
    parser.add_argument("--prior-weight", type=float, default=20.0,
                        help="pseudo-impressions behind the prior (default 20)")
    parser.add_argument("--run-id", default=None,
                        help="names this run's dead-letter directory (default: UTC time + "
                        "random suffix)")
    parser.add_argument("--dead-letter-dir", default=None,
                        help="directory or URI for this run's dead letters (default: "
                        "<out>/dead_letter/features/run=<run id>)")
    return parser


def new_run_id() -> str:
    """A sortable, unique run id: UTC time and a random suffix."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + uuid.uuid4().hex[:6]


def dead_letter_dir(features_dir: str, run_id: str, stage: str = DEAD_LETTER_STAGE) -> str:
    """Where one run's dead letters go: ``<features_dir>/dead_letter/<stage>/run=<run_id>``."""
    return partitions.join(str(features_dir), DEAD_LETTER_DIR, stage, f"run={run_id}")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, checked, and the rest (Beam's runner flags)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if args.window_days < 1:
        parser.error(f"--window-days must be >= 1, got {args.window_days}")
    if args.days is not None and args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    if args.days is not None and args.first_day is not None:
        parser.error("--days and --first-day exclude each other")
    if args.first_day and args.last_day and args.first_day > args.last_day:
        parser.error(f"--first-day {args.first_day} is after --last-day {args.last_day}")
    if args.label_lookback_days < 0:
        parser.error("--label-lookback-days must be >= 0")
    if args.popular_size < 1:
        parser.error(f"--popular-size must be >= 1, got {args.popular_size}")
    if not 0.0 <= args.prior_ctr <= 1.0 or args.prior_weight <= 0:
        parser.error("--prior-ctr must be in [0, 1] and --prior-weight > 0")
    args.lake, args.out = str(args.lake), str(args.out)
    args.run_id = args.run_id or new_run_id()
    if not all(c.isalnum() or c in "-_." for c in args.run_id):
        parser.error(f"--run-id may hold letters, digits, '-', '_' and '.', got {args.run_id!r}")
    args.dead_letter_dir = str(args.dead_letter_dir or dead_letter_dir(args.out, args.run_id))
    if args.items is None:
        default = partitions.join(args.lake, lake.ITEMS_FILE)
        args.items = default if FileSystems.exists(default) else None
    if args.users is None:
        default = partitions.join(args.lake, lake.USERS_FILE)
        args.users = default if FileSystems.exists(default) else None
    return args, beam_args


@dataclass(frozen=True)
class Plan:
    """What one run reads and writes: lake files, snapshot days and label days (epoch days)."""

    files: list[str]
    first: int
    last: int
    label_first: int


def plan_days(lake_dir: str, window_days: int, days: int | None = None,
              first_day: dt.date | None = None, last_day: dt.date | None = None,
              label_lookback_days: int = 0) -> Plan:
    """The lake files to read and the days to write.

    Snapshots cover every calendar day from the first (or the N-th last, or ``first_day``) lake
    day to the last (or ``last_day``); labels start ``label_lookback_days`` earlier; the files
    read reach ``window_days`` before the first snapshot (and label) day, for the windows and
    their expiries, and one day past the last (only its clicks are used: they label the last
    day's impressions clicked after midnight), so a rebuilt day sees exactly what it saw.
    """
    parts = partitions.lake_partitions(lake_dir)
    if not parts:
        raise LakeError(f"no event partitions under {partitions.join(lake_dir, lake.EVENTS)} "
                        "(run `recstack simulate` first)")
    lake_days = list(parts)
    last = epoch_day(last_day or lake_days[-1])
    if first_day is not None:
        first = epoch_day(first_day)
    elif days is not None:
        first = max(epoch_day(lake_days[0]), last - days + 1)
    else:
        first = epoch_day(lake_days[0])
    if first > last:
        raise LakeError(f"no snapshot days: {from_epoch_day(first)} is after {from_epoch_day(last)}")
    label_first = first - label_lookback_days
    low = min(first - window_days, label_first)
    files = [path for d, found in parts.items() if low <= epoch_day(d) <= last + 1
             for path, _size in found]
    if not files:
        raise LakeError(f"no lake files between {from_epoch_day(low)} and {from_epoch_day(last)}")
    return Plan(files=files, first=first, last=last, label_first=label_first)


def check_files(files: list[str]) -> None:
    """Fail with the file's name (not a Beam stack trace) when a part file is not Parquet."""
    if not files:
        raise LakeError("the lake has day partitions but no part-*.parquet files")
    for path in files:
        try:
            with FileSystems.open(path) as f:
                pq.read_metadata(f)
        except Exception as exc:  # noqa: BLE001 - any reader error means the same thing here
            raise LakeError(f"{path} is not a readable Parquet file: {exc}") from exc


class ReadLakeEvents(beam.PTransform):
    """Parquet part files -> raw row dicts (one per event, every EVENT column)."""

    def __init__(self, files: list[str]) -> None:
        super().__init__()
        self.files = [str(f) for f in files]

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "ReadBatches" >> beam.io.ReadAllFromParquetBatched(with_filename=True)
            | "ToRows" >> beam.ParDo(ArrowBatchToRows())
        )


class WriteTable(beam.PTransform):
    """Rows -> exactly one Parquet file at ``path`` (the small, latest-only popular list)."""

    def __init__(self, path: str, schema, counter: str) -> None:
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


class WriteDeadLetters(beam.PTransform):
    """Dead-letter records -> Parquet files ``<directory>/part-SSSSS-of-NNNNN.parquet``
    (``DEAD_LETTER_SCHEMA``), counted as ``rows_dead_letter`` and ``dead_letter_<step>``.

    A run with no bad row writes one empty file: the directory then says the run had none.
    """

    def __init__(self, directory: str, run_id: str) -> None:
        super().__init__()
        self.directory = str(directory)
        self.run_id = run_id

    def expand(self, records):
        return (
            records
            | "Stamp" >> beam.ParDo(StampDeadLetter(self.run_id))
            | "Write" >> beam.io.WriteToParquet(
                partitions.join(self.directory, "part"), DEAD_LETTER_SCHEMA,
                file_name_suffix=".parquet", codec="snappy", record_batch_size=10_000)
        )


class StampDeadLetter(beam.DoFn):
    """A dead-letter record + the run id; counts the records per step."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.rows = Metrics.counter(NAMESPACE, "rows_dead_letter")

    def process(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.rows.inc()
        Metrics.counter(NAMESPACE, f"dead_letter_{record['step']}").inc()
        yield {**record, "run_id": self.run_id}


def _inc(element, counter):
    counter.inc()
    return element


def _partition_day(row: dict[str, Any], offset_days: int) -> tuple[str, dict[str, Any]]:
    """(ISO day of the row's partition, row): the event_timestamp's day minus ``offset_days``."""
    ts: dt.datetime = row[EVENT_TIMESTAMP]
    return (ts.date() - dt.timedelta(days=offset_days)).isoformat(), row


class WritePartitionFile(beam.DoFn):
    """(ISO day, rows) -> ``<table_dir>/part-<day>.parquet``, rows sorted, written atomically.

    Sorting makes a rerun byte-for-byte comparable; a partition is one day of one table (a few
    entities' rows), small enough for one worker.
    """

    def __init__(self, table_dir: str, schema: pa.Schema, sort_by: list[str], counter: str):
        self.table_dir = table_dir
        self.schema = schema
        self.sort_by = list(sort_by)
        self.counter = Metrics.counter(NAMESPACE, counter)

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        day, rows = element
        table = pa.Table.from_pylist(list(rows), schema=self.schema)
        table = table.sort_by([(c, "ascending") for c in self.sort_by])
        path = partitions.partition_path(self.table_dir, dt.date.fromisoformat(day))
        partitions.write_table_atomic(table, path)
        self.counter.inc(table.num_rows)
        yield path


class WritePartitions(beam.PTransform):
    """Rows -> one Parquet file per day under ``table_dir`` (see :mod:`pipelines.partitions`).

    ``offset_days`` = 1 for snapshots (T is midnight *after* the snapshot day), 0 for labels.
    """

    def __init__(self, table_dir: str, schema: pa.Schema, sort_by: list[str], counter: str,
                 offset_days: int) -> None:
        super().__init__()
        self.table_dir, self.schema, self.sort_by = table_dir, schema, list(sort_by)
        self.counter, self.offset_days = counter, offset_days

    def expand(self, rows):
        return (
            rows
            | "KeyByDay" >> beam.Map(_partition_day, self.offset_days)
            | "GroupByDay" >> beam.GroupByKey()
            | "WriteDay" >> beam.ParDo(WritePartitionFile(
                self.table_dir, self.schema, self.sort_by, self.counter))
        )


def build(pipeline: beam.Pipeline, args: argparse.Namespace, plan: Plan | None = None) -> Plan:
    """Add every step of the feature pipeline to ``pipeline`` (see the module docstring)."""
    # The v2 tables' longest window (28 days) sets how far back a run reads.
    read_back = max(args.window_days, LONG_DAYS) if args.items else args.window_days
    plan = plan or plan_days(args.lake, read_back, args.days, args.first_day,
                             args.last_day, args.label_lookback_days)
    check_files(plan.files)
    out: str = args.out
    first, last = plan.first, plan.last
    logger.info("features: %d files, snapshots %s..%s, labels from %s", len(plan.files),
                from_epoch_day(first), from_epoch_day(last), from_epoch_day(plan.label_first))

    validated = (
        pipeline
        | "ReadLake" >> ReadLakeEvents(plan.files)
        | "Validate" >> beam.ParDo(ValidateEvent(report_from=first))
        .with_outputs(DEAD_LETTER, main="events")
    )
    validated[DEAD_LETTER] | "WriteDeadLetters" >> WriteDeadLetters(args.dead_letter_dir,
                                                                   args.run_id)
    events = validated.events | "Dedupe" >> DedupeEvents()

    # created = T: the rows are a pure function of the lake, so a rerun writes equal tables
    # (Feast only uses `created` to break ties between rows of one entity and T, and a day's
    # partition is replaced as a whole, so there are none).
    snapshot_args = dict(window_days=args.window_days, first=first, last=last,
                         prior_ctr=args.prior_ctr, prior_weight=args.prior_weight, created=None)
    user_days = events | "UserDailyCounts" >> DailyCounts("user_id")
    item_days = events | "ItemDailyCounts" >> DailyCounts("item_id")
    (
        user_days
        | "UserSnapshots" >> DailySnapshots("user_id", "user", USER_FEATURES, **snapshot_args)
        | "WriteUserFeatures" >> WritePartitions(
            partitions.join(out, USER_FEATURES_FILE), USER_FEATURES_SCHEMA, ["user_id"],
            "rows_user_features", offset_days=1)
    )
    (
        item_days
        | "ItemSnapshots" >> DailySnapshots("item_id", "item", ITEM_FEATURES, **snapshot_args)
        | "WriteItemFeatures" >> WritePartitions(
            partitions.join(out, ITEM_FEATURES_FILE), ITEM_FEATURES_SCHEMA, ["item_id"],
            "rows_item_features", offset_days=1)
    )
    (
        item_days
        | "Popular" >> PopularItems(day=last, size=args.popular_size)
        | "WritePopular" >> WriteTable(partitions.join(out, POPULAR_FILE), POPULAR_SCHEMA,
                                       "rows_popular")
    )
    (
        events
        | "Labels" >> ImpressionLabels(first=plan.label_first, last=plan.last)
        | "WriteLabels" >> WritePartitions(
            partitions.join(out, LABELS_FILE), LABELS_SCHEMA,
            ["event_timestamp", "user_id", "request_id", "item_id", "position"], "rows_labels",
            offset_days=0)
    )
    if args.items:
        build_v2(pipeline, args, plan, events, user_days, item_days)
    return plan


def build_v2(pipeline: beam.Pipeline, args: argparse.Namespace, plan: Plan, events, user_days,
             item_days) -> None:
    """The ranker_v2 tables and the fresh list (see :mod:`pipelines.windows`)."""
    out, first, last = args.out, plan.first, plan.last
    catalogue = beam.pvalue.AsDict(
        pipeline
        | "ReadItems" >> beam.io.ReadFromParquet(args.items,
                                                 columns=["item_id", "category", "created_at"])
        | "CatalogueEntry" >> beam.Map(catalogue_entry)
    )
    profiles = beam.pvalue.AsDict(
        (pipeline
         | "ReadUsers" >> beam.io.ReadFromParquet(args.users,
                                                  columns=["user_id", "country", "device"])
         | "ProfileEntry" >> beam.Map(profile_entry))
        if args.users else (pipeline | "NoUsers" >> beam.Create([])))
    (
        user_days
        | "UserV2" >> EntitySnapshotsV2(UserV2Rows(first, last, args.prior_ctr,
                                                   args.prior_weight), profiles)
        | "WriteUserV2" >> WritePartitions(
            partitions.join(out, USER_FEATURES_V2_FILE), USER_FEATURES_V2_SCHEMA, ["user_id"],
            "rows_user_features_v2", offset_days=1)
    )
    item_rows = item_days | "ItemV2" >> EntitySnapshotsV2(
        ItemV2Rows(first, last, args.prior_ctr, args.prior_weight), catalogue)
    (
        item_rows
        | "WriteItemV2" >> WritePartitions(
            partitions.join(out, ITEM_FEATURES_V2_FILE), ITEM_FEATURES_V2_SCHEMA, ["item_id"],
            "rows_item_features_v2", offset_days=1)
    )
    (
        item_rows
        | "Fresh" >> FreshItems(day=last, size=args.popular_size)
        | "WriteFresh" >> WriteTable(partitions.join(out, FRESH_FILE), FRESH_SCHEMA,
                                     "rows_fresh")
    )
    (
        events
        | "UserCategory" >> UserCategorySnapshots(catalogue, first, last)
        | "WriteUserCategory" >> WritePartitions(
            partitions.join(out, USER_CATEGORY_FEATURES_FILE), USER_CATEGORY_FEATURES_SCHEMA,
            ["user_id", "category"], "rows_user_category_features", offset_days=1)
    )


def run(argv: list[str] | None = None) -> PipelineResult:
    """Run the feature pipeline to completion; returns Beam's result (see :func:`counters`).

    In: ``argv`` = our flags (``--lake``, ``--out``, ``--window-days``, ``--days``,
    ``--popular-size``, ``--prior-ctr``, ``--prior-weight``) plus Beam runner flags (DirectRunner
    by default). Out: the tables listed in the module docstring under ``--out``. Raises
    :class:`LakeError` when the lake is missing, empty or unreadable.
    """
    args, beam_args = parse_args(argv)
    if not FileSystems.exists(args.out):
        FileSystems.mkdirs(args.out)
    if _has_files(args.dead_letter_dir):
        raise LakeError(f"dead-letter directory {args.dead_letter_dir} already has files: "
                        "each run needs its own --run-id")
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, args)
    result = pipeline.run()
    result.wait_until_finish()
    logger.info("features: %s", counters(result))
    return result


def _has_files(directory: str) -> bool:
    try:
        return bool(FileSystems.match([partitions.join(directory, "*")])[0].metadata_list)
    except BeamIOError:  # a remote directory that does not exist yet
        return False


def counters(result: PipelineResult) -> dict[str, int]:
    """The pipeline's counters by name: rows_read, rows_valid, rows_bad, bad_<reason>,
    rows_dead_letter, dead_letter_<step>, events_unique, rows_user_features,
    rows_item_features, rows_popular, rows_labels (and the v2 tables' rows)."""
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in found:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or 0)
    for name in ("rows_read", "rows_valid", "rows_bad", "rows_dead_letter", "events_unique",
                 "rows_user_features", "rows_item_features", "rows_popular", "rows_labels"):
        totals.setdefault(name, 0)
    return dict(sorted(totals.items()))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: runs :func:`run`, prints the counters and where the dead letters
    went as JSON; 2 on a bad lake."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _beam_args = parse_args(argv)
    argv += ["--run-id", args.run_id, "--dead-letter-dir", args.dead_letter_dir]
    try:
        result = run(argv)
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"counters": counters(result), "dead_letter_dir": args.dead_letter_dir},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
