"""Thresholds, consecutive breaches and the retraining cool-down."""

from __future__ import annotations

from monitoring.trigger import AlertState, Cooldown, Signal, cause_of


def test_signal_direction_and_nan() -> None:
    assert Signal("psi", 0.3, 0.25).breached
    assert not Signal("psi", 0.2, 0.25).breached
    assert Signal("ctr", 0.7, 0.85, above=False).breached
    assert not Signal("ctr", float("nan"), 0.85, above=False).breached


def test_alert_needs_consecutive_breaches_and_resets_on_a_good_check() -> None:
    state = AlertState(consecutive=2)
    bad, good = Signal("psi", 0.5, 0.25), Signal("psi", 0.1, 0.25)
    assert state.update([bad]) == []
    assert [s.name for s in state.update([bad])] == ["psi"]
    assert state.update([good]) == []
    assert state.update([bad]) == []


def test_cooldown_allows_one_action_per_period() -> None:
    cd = Cooldown(3600)
    assert cd.fire(1000.0)
    assert not cd.fire(2000.0)
    assert cd.remaining(2000.0) == 2600.0
    assert cd.fire(4600.0)


def test_cause_names_every_signal() -> None:
    text = cause_of([Signal("psi_user_ctr_7d", 0.31, 0.25),
                     Signal("online_ctr_ratio", 0.7, 0.85, above=False)])
    assert "psi_user_ctr_7d=0.31 > 0.25" in text and "online_ctr_ratio=0.7 < 0.85" in text
