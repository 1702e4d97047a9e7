"""A CTR episode: a drop of the online CTR being worked on, from the retraining it started
until the CTR is back (or the retrainings it may start ran out)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from monitoring.trigger import Signal
from recstack.settings import MonitorSettings

if TYPE_CHECKING:
    from monitoring.ctr import CtrCheck
    from monitoring.results import CheckResult

# The monitor's log lines keep the logger name they had before this module was split out.
logger = logging.getLogger("monitoring.monitor")


def _day(at: float) -> int:
    """The UTC day number of a clock reading (unix seconds)."""
    return int(at // 86_400)


class EpisodeTracker:
    """No episode -> open (a CTR signal started a retraining) -> closed once the window CTR
    (of whatever version serves now) is back within ``ctr_drop`` of its level before the drop.

    While open, another retraining is due once ``episode_new_day_hours`` of a day after the
    episode's last retraining have passed, up to ``max_episode_retrains``. (Labels and the
    gate's holdout are whole days, the newest one held out: a retraining on the same day, or
    before any of the next day exists, trains on the same days as the last, so it can only
    repeat it. In the drift experiment it did: the same AUC to four digits, rejected.)
    """

    def __init__(self, cfg: MonitorSettings, ctr_check: CtrCheck) -> None:
        self.cfg = cfg
        self.ctr_check = ctr_check
        # The open episode: {"baseline": CTR before the drop, "retrains": n, "day": the day of
        # the last retraining, "segment": the segment that dropped or None: all}.
        self.episode: dict[str, Any] | None = None

    def on_retrain(self, started_by: list[Signal], now: float) -> None:
        """A drift retraining starts: counted in the open episode, or opening one when a CTR
        signal is among ``started_by``."""
        label = ",".join(s.name for s in started_by)
        if "online_ctr_ratio" in label and self.episode is None:
            # The episode follows the CTR that dropped: everyone's, else the worst segment's.
            names = {s.name for s in started_by}
            seg = None if "online_ctr_ratio" in names else self.ctr_check.segment_ctr.worst()[0]
            self.episode = {"baseline": self.ctr_check.tracker(seg).baseline_ctr, "retrains": 0,
                            "segment": seg}
        if self.episode is not None:
            self._count_retrain(now)

    def check_recovery(self, result: CheckResult) -> float | None:
        """The followed window CTR / its level before the drop (also in ``result``) while it
        is short of that level; None while the window is not full, or once recovered (which
        ends the episode)."""
        assert self.episode is not None
        seg = self.episode.get("segment")
        tracker = self.ctr_check.tracker(seg)
        imps, _ = tracker.window_counts
        if imps < tracker.window_impressions:
            return None  # a new champion's window is not full yet
        level = tracker.window_ctr / self.episode["baseline"]
        result.values["ctr_vs_pre_drop"] = level
        if level >= 1 - self.cfg.ctr_drop:
            logger.warning("monitor: online CTR%s recovered to %.0f%% of its level before the "
                           "drop after %d retraining(s)", f" of {seg}" if seg else "",
                           100 * level, self.episode["retrains"])
            self.episode = None
            return None
        return level

    def due_for_retrain(self, now: float) -> bool:
        """Retrainings left, and a new day's worth of data since the last one."""
        assert self.episode is not None
        if self.episode["retrains"] >= self.cfg.max_episode_retrains:
            return False
        return _day(now - 3600 * self.cfg.episode_new_day_hours) > self.episode.get("day", -1)

    def retrain_again(self, level: float, now: float) -> str:
        """Counts the episode's next retraining; returns its cause."""
        assert self.episode is not None
        self._count_retrain(now)
        seg = self.episode.get("segment")
        return (f"online CTR{f' of {seg}' if seg else ''} not recovered: {level:.2f} of its "
                f"level before the drop")

    def _count_retrain(self, now: float) -> None:
        assert self.episode is not None
        self.episode["retrains"] += 1
        self.episode["day"] = _day(now)
