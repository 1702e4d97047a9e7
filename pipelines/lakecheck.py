"""Suspicious lake partitions, and moving them aside (``recstack lake check``, every pipeline plan).

**The plausible day range** (why: one client posting events stamped in the years 0170 and 4324
made the next pipeline run plan daily snapshots over 4,000 years). It is relative to the lake's
own data, not to today's wall clock: an imported MovieLens lake lives in the 1990s, a simulated
one wherever ``SimSettings.start_date`` put it, and the stack's clock (the simulated clock
where one runs) is not known to a pipeline run. The rule (:func:`plausible_range`):

1. the *typical* day is the row-weighted median of the rows per day (half of the lake's events
   are in days at most this busy), so thousands of one-event days do not lower it;
2. a day is *dense* when it holds at least ``dense_fraction`` of the typical day's rows;
3. dense days at most ``max_gap_days`` apart form a run; the run holding the most rows (its
   sparse days included) is the lake's *bulk*;
4. plausible = [bulk's first day - ``lookback_days``, bulk's last day + ``ahead_days``]:
   stragglers before the bulk (late data, the window's reach) and the sink's first events of
   the days after it (a live stack writes the next day before it is dense) stay in.

A partition outside that range is quarantined (``recstack.lake.quarantine``: moved, never
deleted) before the pipeline plans; ``recstack lake check`` also reports partitions with an
unreadable part file, a part file of another schema, no rows, or a directory name that is not
a date, and with ``--quarantine`` moves them aside too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recstack import lake
from recstack.schemas import EVENT_SCHEMA
from recstack.settings import PipelineSettings

logger = logging.getLogger(__name__)

OUT_OF_RANGE = "out_of_range"
UNREADABLE = "unreadable"
SCHEMA_MISMATCH = "schema_mismatch"
EMPTY = "empty"
BAD_NAME = "bad_name"
_PREFIX = "date="


@dataclass(frozen=True)
class PlausibleRule:
    """The knobs of the plausible day range (module docstring; ``settings.pipeline.lake_*``)."""

    dense_fraction: float = 0.01
    max_gap_days: int = 30
    lookback_days: int = 30
    ahead_days: int = 7

    @classmethod
    def from_settings(cls, cfg: PipelineSettings) -> PlausibleRule:
        return cls(cfg.lake_dense_fraction, cfg.lake_max_gap_days, cfg.lake_lookback_days,
                   cfg.lake_ahead_days)


@dataclass(frozen=True)
class Finding:
    """One suspicious partition (``files`` empty: the whole partition) and why."""

    partition: str  # the directory name, "date=YYYY-MM-DD"
    day: dt.date | None  # None when the name is not a date
    reason: str
    detail: str
    rows: int  # readable rows concerned
    files: tuple[str, ...] = ()  # the part files concerned; () = the whole partition

    @property
    def whole_partition(self) -> bool:
        return not self.files


@dataclass
class LakeReport:
    """What a scan found: totals, the plausible range and the suspicious partitions."""

    days: int = 0
    files: int = 0
    rows: int = 0
    plausible: tuple[dt.date, dt.date] | None = None
    findings: list[Finding] = field(default_factory=list)
    quarantined_to: str | None = None

    @property
    def suspicious_rows(self) -> int:
        return sum(f.rows for f in self.findings)

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.reason] = out.get(f.reason, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        """The report as plain JSON values (for the run's manifest and ``--json``)."""
        return {
            "days": self.days, "files": self.files, "rows": self.rows,
            "plausible": [d.isoformat() for d in self.plausible] if self.plausible else None,
            "partitions": len(self.findings), "suspicious_rows": self.suspicious_rows,
            "by_reason": self.by_reason(), "quarantined_to": self.quarantined_to,
            "findings": [{**asdict(f), "day": f.day.isoformat() if f.day else None,
                          "files": list(f.files)} for f in self.findings],
        }


def plausible_range(rows_per_day: Mapping[dt.date, int], rule: PlausibleRule
                    ) -> tuple[dt.date, dt.date] | None:
    """[first, last] plausible day of a lake with these rows per day (module docstring);
    None for a lake without rows."""
    bulk = _bulk(rows_per_day, rule)
    if bulk is None:
        return None
    first, last = bulk
    return (_shift(first, -rule.lookback_days), _shift(last, rule.ahead_days))


def _bulk(rows_per_day: Mapping[dt.date, int], rule: PlausibleRule
          ) -> tuple[dt.date, dt.date] | None:
    """First and last dense day of the run of dense days holding the most rows."""
    days = {d: n for d, n in rows_per_day.items() if n > 0}
    if not days:
        return None
    threshold = rule.dense_fraction * _typical_day(list(days.values()))
    dense = sorted(d for d, n in days.items() if n >= threshold)
    runs: list[list[dt.date]] = [[dense[0]]]
    for day in dense[1:]:
        if (day - runs[-1][-1]).days > rule.max_gap_days:
            runs.append([])
        runs[-1].append(day)

    def weight(run: list[dt.date]) -> tuple[int, dt.date]:  # ties: the most recent run
        return sum(n for d, n in days.items() if run[0] <= d <= run[-1]), run[-1]

    best = max(runs, key=weight)
    return best[0], best[-1]


def _typical_day(rows: list[int]) -> float:
    """The row-weighted median of rows per day: half of all rows are in days this busy or less."""
    half, seen = sum(rows) / 2, 0
    for n in sorted(rows):
        seen += n
        if seen >= half:
            return float(n)
    return float(max(rows))


def _shift(day: dt.date, days: int) -> dt.date:
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:  # near year 1 or 9999
        return dt.date.min if days < 0 else dt.date.max


def scan(lake_dir: Path, rule: PlausibleRule,
         progress: Callable[[int, int], None] | None = None) -> LakeReport:
    """Every partition of ``<lake>/events``: totals, the plausible range, the suspicious ones.

    Reads only the Parquet footers (row counts and schemas), so it costs little per file;
    ``progress(done, total)`` is called after each partition.
    """
    root = Path(lake_dir) / lake.EVENTS
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)) \
        if root.exists() else []
    report = LakeReport(days=len(dirs))
    rows_per_day: dict[dt.date, int] = {}
    for i, directory in enumerate(dirs, 1):
        day, found, rows = _scan_partition(directory, report)
        report.findings += found
        if day is not None:
            rows_per_day[day] = rows
        if progress is not None:
            progress(i, len(dirs))
    report.plausible = plausible_range(rows_per_day, rule)
    if report.plausible is not None:
        low, high = report.plausible
        for day, rows in rows_per_day.items():
            if not low <= day <= high:
                report.findings.append(Finding(
                    f"{_PREFIX}{day.isoformat()}", day, OUT_OF_RANGE,
                    f"outside the plausible range {low}..{high}", rows))
    report.findings.sort(key=lambda f: (f.partition, f.reason))
    return report


def _scan_partition(directory: Path, report: LakeReport
                    ) -> tuple[dt.date | None, list[Finding], int]:
    """(day, findings, readable rows) of one partition directory; adds to the report's totals."""
    name = directory.name
    try:
        day: dt.date | None = dt.date.fromisoformat(name.removeprefix(_PREFIX))
    except ValueError:
        return None, [Finding(name, None, BAD_NAME, "the directory name is not date=YYYY-MM-DD",
                              0)], 0
    files = sorted(directory.glob("part-*.parquet"))
    report.files += len(files)
    found: list[Finding] = []
    rows = 0
    for path in files:
        try:
            meta = pq.read_metadata(path)
            problem = schema_problem(meta.schema.to_arrow_schema())
        except Exception as exc:  # noqa: BLE001 - whatever the reader says, it is unreadable
            found.append(Finding(name, day, UNREADABLE, f"{path.name}: {exc}"[:300], 0,
                                 (str(path),)))
            continue
        if problem:
            found.append(Finding(name, day, SCHEMA_MISMATCH, f"{path.name}: {problem}",
                                 meta.num_rows, (str(path),)))
            continue
        rows += meta.num_rows
    report.rows += rows
    if rows == 0 and not found:
        found.append(Finding(name, day, EMPTY, "no part files" if not files else "no rows", 0))
    return day, found, rows


def schema_problem(schema: pa.Schema) -> str | None:
    """Why a part file's schema cannot be read as EVENT_SCHEMA (None when it can): a required
    column missing, or a column of another kind (the pipeline casts widths and units)."""
    for want in EVENT_SCHEMA:
        if want.name not in schema.names:
            if not want.nullable:
                return f"lacks the required column {want.name!r}"
            continue
        got = schema.field(want.name).type
        if not _same_kind(got, want.type):
            return f"column {want.name!r} is {got}, not {want.type}"
    return None


def _same_kind(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_null(got):
        return True
    for kind in (pa.types.is_timestamp, pa.types.is_integer, pa.types.is_string):
        if kind(want):
            return kind(got) or (kind is pa.types.is_string and pa.types.is_large_string(got))
    return got == want


def quarantine(lake_dir: Path, report: LakeReport, tag: str,
               reasons: frozenset[str] | None = None) -> LakeReport:
    """Move the report's findings (only those of ``reasons`` when given) to
    ``<lake>/quarantine/<tag>/`` and record why; returns the report of what was moved."""
    chosen = [f for f in report.findings if reasons is None or f.reason in reasons]
    moved = LakeReport(days=report.days, files=report.files, rows=report.rows,
                       plausible=report.plausible, findings=chosen)
    if not chosen:
        return moved
    whole = {f.partition for f in chosen if f.whole_partition}
    events = Path(lake_dir) / lake.EVENTS
    for name in sorted(whole):
        if (events / name).exists():
            lake.quarantine(lake_dir, events / name, tag)
    for f in chosen:
        if f.partition in whole:
            continue  # moved with its partition
        for path in f.files:
            if Path(path).exists():
                lake.quarantine(lake_dir, Path(path), tag)
        if not any((events / f.partition).iterdir()):
            (events / f.partition).rmdir()  # nothing left: not an 'empty' finding next time
    record = lake.record_quarantine(lake_dir, tag, moved.summary()["findings"])
    moved.quarantined_to = str(record.parent)
    logger.warning("quarantined %d lake partitions (%s, %d rows) to %s", len(chosen),
                   moved.by_reason(), moved.suspicious_rows, record.parent)
    return moved
