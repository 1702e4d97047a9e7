"""Per-user memory of recent impressions, the state behind the click model's fatigue.

Memory is bounded: each user keeps a ring of the last ``memory`` items shown, so the state is
``n_users x memory`` int32 whatever the length of the run. Everything is vectorised over a
batch of impressions, so a day of ten million events costs a few array passes.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MEMORY = 20  # impressions remembered per user (about two lists)
_COUNT_CHUNK = 1 << 18  # rows per comparison block in counts(): bounds the [rows, memory] temp


class RecentImpressions:
    """The last ``memory`` items shown to each user (a ring buffer per user, -1 = empty)."""

    def __init__(self, n_users: int, memory: int = DEFAULT_MEMORY) -> None:
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        self.memory = memory
        self.items = np.full((n_users, memory), -1, dtype=np.int32)
        self.next = np.zeros(n_users, dtype=np.int64)  # slot the user's next impression takes

    @property
    def n_users(self) -> int:
        return int(self.items.shape[0])

    def counts(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """How often each (user, item) pair is in the user's memory, int16 aligned with the ids."""
        users = np.asarray(user_ids, dtype=np.int64).ravel()
        items = np.asarray(item_ids, dtype=np.int32).ravel()
        out = np.empty(users.shape[0], dtype=np.int16)
        for lo in range(0, users.shape[0], _COUNT_CHUNK):
            part = slice(lo, lo + _COUNT_CHUNK)
            out[part] = (self.items[users[part]] == items[part, None]).sum(axis=1)
        return out

    def record(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        """Remember impressions given in time order; each user keeps only their last ``memory``."""
        users = np.asarray(user_ids, dtype=np.int64).ravel()
        items = np.asarray(item_ids, dtype=np.int32).ravel()
        if users.size == 0:
            return
        order = np.argsort(users, kind="stable")  # stable: time order kept within a user
        users, items = users[order], items[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        per_user = np.diff(np.r_[starts, users.size])
        rank = np.arange(users.size) - np.repeat(starts, per_user)
        # Only a user's last `memory` impressions survive, so the slots written are distinct.
        keep = rank >= np.repeat(per_user, per_user) - self.memory
        slot = (self.next[users[keep]] + rank[keep]) % self.memory
        self.items[users[keep], slot] = items[keep]
        firsts = users[starts]
        self.next[firsts] = (self.next[firsts] + per_user) % self.memory
