"""After a CTR drop, the monitor retrains again (after the cool-down, on a new day) until CTR
is back (capped)."""

from __future__ import annotations

import numpy as np

from monitoring.monitor import DriftMonitor
from monitoring.references import ChampionReference
from recstack.settings import Settings


class Stream:
    """Fake ``xrange``: each ``push`` is one check's worth of events."""

    def __init__(self) -> None:
        self.pending: list = []
        self.n = 0

    def push(self, ctr: float, version: str, seed: int, n: int = 100) -> None:
        rng = np.random.default_rng(seed)
        for r in range(n):
            for p in range(10):
                self.n += 1
                base = {b"user_id": str(r).encode(), b"item_id": str(p).encode(),
                        b"request_id": f"{seed}-{r}".encode(), b"position": str(p).encode(),
                        b"model_version": version.encode()}
                self.pending.append((f"{self.n}-0".encode(), {**base, b"event_type": b"impression"}))
                if rng.random() < ctr:
                    self.n += 1
                    self.pending.append((f"{self.n}-0".encode(), {**base, b"event_type": b"click"}))

    def xrange(self, *a, count: int, **k):
        out, self.pending = self.pending[:count], self.pending[count:]
        return out


def test_episode_retrains_until_recovered(settings: Settings) -> None:
    s = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={
        "ctr_baseline_impressions": 2000, "ctr_window_impressions": 2000, "ctr_z": 3.0,
        "consecutive": 1, "cooldown_s": 10.0, "max_episode_retrains": 3,
        "episode_new_day_hours": 3.0})})
    calls: list[str] = []
    now = {"t": 0.0}
    stream = Stream()
    ref = ChampionReference({"ranker": "1"}, {"ranker": 0.0})
    m = DriftMonitor(s, redis=stream, retrainer=lambda c: calls.append(c) or 0,
                     clock=lambda: now["t"], background_retrain=False,
                     reference_loader=lambda: ref)

    def step(ctr: float, version: str, seed: int) -> None:
        stream.push(ctr, version, seed)
        m.check()
        now["t"] += 3 * 3600  # a check every 3 hours: the first retraining on day 0 at 15:00

    for i in range(4):
        step(0.10, "v1", i)
    for i in range(2):
        step(0.04, "v1", 10 + i)
    assert len(calls) == 1 and m.episode is not None
    for i in range(2):  # v2 (a retrained model) is no better, but it is still day 0 ...
        step(0.04, "v2", 20 + i)
    assert len(calls) == 1  # ... and a retraining today would train on the same days
    step(0.04, "v2", 22)  # day 1, 00:00: the new day has no labels yet
    assert len(calls) == 1
    step(0.04, "v2", 23)  # day 1, 03:00: some (episode_new_day_hours = 3): retrain again
    assert len(calls) == 2 and "not recovered" in calls[1]
    for i in range(3):  # v3 is back near the old level: the episode ends
        step(0.095, "v3", 30 + i)
    assert m.episode is None and len(calls) == 2
