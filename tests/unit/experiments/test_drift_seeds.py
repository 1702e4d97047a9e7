"""The drift table over seeds: a seed that never recovers is shown as such and makes the
minimum "not recovered"; means skip it; text columns get no statistics."""

from __future__ import annotations

from app.experiments.drift.seeds import seed_table


def _run(seed: int, affected: float, time_days: float | None, promotions: int) -> dict:
    return {"seed": seed, "drift_detection_delay_sim_days": 0.25,
            "live_affected_ctr_recovery_fraction": affected,
            "live_affected_ctr_recovery_time_sim_days": time_days,
            "retrains": 2, "promotions": promotions,
            "false_alarm_max_psi": {"psi_a": 0.1, "psi_b": 0.4}}


def test_a_seed_that_never_recovers_is_the_minimum_and_out_of_the_mean() -> None:
    table = seed_table([_run(1, 0.9, 1.25, 2), _run(2, 0.3, None, 0), _run(3, 0.7, 1.5, 2)])
    by_seed = table.set_index("seed")
    assert by_seed.loc[2, "affected recovery time (days)"] == "not recovered"
    assert by_seed.loc["min", "affected recovery time (days)"] == "not recovered"
    assert by_seed.loc["mean", "affected recovery time (days)"] == 1.375
    assert by_seed.loc["mean", "affected live"] == round((0.9 + 0.3 + 0.7) / 3, 3)
    assert by_seed.loc["min", "affected live"] == 0.3
    assert by_seed.loc[2, "retrains / promoted"] == "2 / 0"
    assert by_seed.loc[1, "max PSI, 7-day replay"] == 0.4
    assert by_seed.loc["mean", "max PSI, 7-day replay"] == ""
