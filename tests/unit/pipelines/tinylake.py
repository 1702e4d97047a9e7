"""Tiny hand-written lakes for the pipeline tests (shared with the Feast integration test)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa

from recstack import lake
from recstack.schemas import EVENT_SCHEMA

UTC = dt.timezone.utc
DAY1 = dt.date(2026, 1, 1)
_ids = itertools.count()


def at(day: dt.date, hour: int = 12, minute: int = 0, microsecond: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, 0, microsecond), tzinfo=UTC)


def event(ts: dt.datetime, user_id: int, item_id: int, event_type: str = "impression",
          request_id: str | None = "r", position: int | None = 0, event_id: str | None = None
          ) -> dict[str, Any]:
    return {
        "event_id": event_id or f"e{next(_ids)}",
        "ts": ts,
        "user_id": user_id,
        "item_id": item_id,
        "event_type": event_type,
        "request_id": request_id,
        "position": position,
        "model_version": "test",
    }


def shown_and_clicked(ts: dt.datetime, user_id: int, item_id: int, request_id: str,
                      clicked: bool = False, position: int = 0) -> list[dict[str, Any]]:
    """An impression, and its click a minute later when ``clicked``."""
    rows = [event(ts, user_id, item_id, "impression", request_id, position)]
    if clicked:
        rows.append(event(ts + dt.timedelta(minutes=1), user_id, item_id, "click", request_id,
                          position))
    return rows


def write_lake(lake_dir: Path, rows: list[dict[str, Any]], batch_key: str = "test") -> None:
    lake.write_events(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), lake_dir, batch_key)
