"""The merged candidate set: ANN hits + popular + fresh items, de-duplicated, labelled by source.

In:  per user, the ANN's ranked item ids; the popular list; the fresh list (newest first).
Out: up to ``k`` item ids with the source each came from, in that order of priority.

Why reserve slots for popular and fresh items: the ANN only retrieves items with an
embedding learnt from past interactions, so a new item (no interactions yet) could never be
shown and never earn any; a small fixed share of the list gives new and trending items a way in.
The shares follow serving (``serving/candidates.py``: popular fill = min(50, k // 10)).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd

ANN, POPULAR, FRESH = "ann", "popular", "fresh"
SOURCES = (ANN, POPULAR, FRESH)
POPULAR_FILL_MAX = 50
FRESH_WINDOW_DAYS = 7


def fresh_items(items: pd.DataFrame, as_of: dt.datetime, window_days: int = FRESH_WINDOW_DAYS,
                ) -> list[int]:
    """Items released in the ``window_days`` before ``as_of`` (never after), newest first.

    ``items`` needs ``item_id`` and ``created_at`` (UTC) columns, as in the lake's catalogue.
    """
    if items.empty:
        return []
    created = pd.to_datetime(items["created_at"], utc=True)
    start = pd.Timestamp(as_of) - pd.Timedelta(days=window_days)
    keep = (created < pd.Timestamp(as_of)) & (created >= start)
    recent = items.loc[keep, ["item_id"]].assign(created=created[keep])
    return recent.sort_values("created", ascending=False)["item_id"].astype("int64").tolist()


def slot_counts(k: int) -> tuple[int, int]:
    """(popular slots, fresh slots) reserved in a list of ``k`` candidates."""
    return min(POPULAR_FILL_MAX, k // 10), k // 20


def merge_candidates(
    ann: Sequence[int], popular: Sequence[int], fresh: Sequence[int], k: int
) -> tuple[list[int], list[str]]:
    """Merge the three sources into at most ``k`` distinct items: (item ids, sources).

    Order: the ANN's best ``k - reserved`` hits, then fresh, then popular items not yet in the
    list (up to their reserved slots), then further ANN hits, fresh and popular items if slots
    are left (a short ANN list, e.g. a user with few interactions). Negative ids (faiss padding)
    are skipped. An item found by several sources keeps the first source that added it.
    """
    n_pop, n_fresh = slot_counts(k)
    ann = [int(i) for i in ann if int(i) >= 0]
    ids: list[int] = []
    sources: list[str] = []
    seen: set[int] = set()

    def take(candidates: Sequence[int], source: str, limit: int) -> None:
        added = 0
        for item in candidates:
            if len(ids) >= k or added >= limit:
                return
            item = int(item)
            if item not in seen:
                seen.add(item)
                ids.append(item)
                sources.append(source)
                added += 1

    take(ann, ANN, k - n_pop - n_fresh)
    take(fresh, FRESH, n_fresh)
    take(popular, POPULAR, n_pop)
    for candidates, source in ((ann, ANN), (fresh, FRESH), (popular, POPULAR)):
        take(candidates, source, k)
    return ids, sources
