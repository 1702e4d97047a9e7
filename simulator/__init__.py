"""simulator: the seeded world (catalogue, users, ground-truth clicks) and its traffic."""

from simulator.generate import SimulationSummary, simulate, simulate_day
from simulator.policy import LoggingPolicy, expected_ctr, oracle_topk, random_topk
from simulator.world import World

__all__ = [
    "LoggingPolicy",
    "SimulationSummary",
    "World",
    "expected_ctr",
    "oracle_topk",
    "random_topk",
    "simulate",
    "simulate_day",
]
