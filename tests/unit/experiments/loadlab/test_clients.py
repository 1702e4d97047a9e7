"""How the load lab offers a rate: open loop from many connections, or the paced closed loop."""

from __future__ import annotations

import pytest

from app.experiments.loadlab.loadgen import MIN_CONNECTIONS, _environment, clients_for
from recstack.settings import Settings


def test_open_loop_uses_at_least_the_minimum_connections_and_offers_exactly_the_rate() -> None:
    low = clients_for(40.0, "poisson", user_rps=4.0)
    assert low.users == MIN_CONNECTIONS == 100 and low.rps == pytest.approx(40.0)
    high = clients_for(1000.0, "poisson", user_rps=4.0)  # past 100 users x 4/s: more users
    assert high.users == 250 and high.rps == pytest.approx(1000.0)
    assert clients_for(50.0, "poisson", connections=200).users == 200


def test_paced_keeps_the_closed_loop_of_earlier_runs() -> None:
    paced = clients_for(41.0, "paced", user_rps=4.0)
    assert (paced.users, paced.user_rps, paced.rps) == (11, 4.0, 44.0)
    with pytest.raises(ValueError, match="arrivals"):
        clients_for(10.0, "bursty")


def test_the_locustfile_is_told_the_arrivals(tmp_path) -> None:
    env = _environment(Settings(home=tmp_path), tmp_path, 0.4, None, "paced")
    assert env["RECSTACK_LOADTEST_ARRIVALS"] == "paced"
    assert env["RECSTACK_LOADTEST_USER_RPS"] == "0.400000"
