"""The online CTR check: the champion's CTR in its last window against a lagged baseline,
overall and per user segment (``monitor.ctr_segment_by``); a drop both large and significant
is a drift signal. The episode tracker follows the same trackers until the CTR is back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitoring import events as ev
from monitoring.trigger import Signal
from recstack.settings import MonitorSettings

if TYPE_CHECKING:
    from monitoring.results import CheckResult, MonitorMetrics


class CtrCheck:
    """The CTR trackers (everyone's, one per segment), their gauges and drop signals."""

    def __init__(self, cfg: MonitorSettings, metrics: MonitorMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.ctr = ev.CtrTracker(cfg.ctr_baseline_impressions, cfg.ctr_window_impressions)
        self.segment_ctr = ev.SegmentCtr(cfg.ctr_segment_window_impressions,
                                        cfg.ctr_segment_baseline_impressions)

    def tracker(self, segment: str | None) -> ev.CtrTracker:
        """The tracker of ``segment``'s CTR, or of everyone's (None)."""
        return self.ctr if segment is None else self.segment_ctr.trackers[segment]

    def measure(self, batch: ev.EventBatch, result: CheckResult) -> None:
        self.ctr.add(batch)
        ratio, z = self.ctr.signal()
        imps, _ = self.ctr.window_counts
        m = self.metrics
        m.ctr.set(self.ctr.window_ctr)
        m.ctr_baseline.set(self.ctr.baseline_ctr)
        m.ctr_ratio.set(ratio)
        m.ctr_z.set(z)
        m.window_imps.set(imps)
        result.values.update(ctr=self.ctr.window_ctr, ctr_baseline=self.ctr.baseline_ctr,
                             ctr_ratio=ratio, ctr_z=z)
        # Both: the drop is large (ratio) and not noise (z).
        result.signals.append(Signal(
            "online_ctr_ratio", ev.drop_signal_value(ratio, z, self.cfg.ctr_drop, self.cfg.ctr_z),
            1 - self.cfg.ctr_drop, above=False))
        if not self.cfg.ctr_segment_by:
            return
        self.segment_ctr.add(batch)
        for seg, (r, _) in self.segment_ctr.signals().items():
            m.segment_ctr_ratio.labels(segment=seg).set(r)
        seg, r, z = self.segment_ctr.worst()
        if seg is not None:
            result.values.update(ctr_segment_ratio=r, ctr_segment_z=z)
            result.signals.append(Signal(
                f"online_ctr_ratio_{self.cfg.ctr_segment_by}",
                ev.drop_signal_value(r, z, self.cfg.ctr_drop, self.cfg.ctr_segment_z),
                1 - self.cfg.ctr_drop, above=False, detail=f"{self.cfg.ctr_segment_by}={seg}"))
