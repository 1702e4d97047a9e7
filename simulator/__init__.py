"""simulator: the seeded world (catalogue, users, ground-truth clicks), its traffic and drifts.

Names are imported lazily (PEP 562) so that ``import simulator.users`` — what the Locust
users need — does not pull in pyarrow and the lake writer.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoggingPolicy": "simulator.policy",
    "expected_ctr": "simulator.policy",
    "oracle_topk": "simulator.policy",
    "random_topk": "simulator.policy",
    "SimulationSummary": "simulator.generate",
    "simulate": "simulator.generate",
    "simulate_day": "simulator.generate",
    "World": "simulator.world",
    "Scenario": "simulator.scenarios",
    "load_scenario": "simulator.scenarios",
    "list_scenarios": "simulator.scenarios",
    "SimulatedUser": "simulator.users",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
