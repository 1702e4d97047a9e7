"""The independent random streams derived from a simulation's seed.

Each consumer draws from ``np.random.default_rng([seed, STREAM_...])`` (plus its own extra keys,
e.g. the day), so that e.g. changing the number of simulated days does not change the world.
One registry for every stream so that no two consumers share one by accident; it sits below
:mod:`simulator.world` and :mod:`simulator.policy` because both draw from it.
"""

from __future__ import annotations

STREAM_WORLD = 0
STREAM_POLICY = 1
STREAM_DAYS = 2
STREAM_CALIBRATION = 3
STREAM_SCENARIO = 4
STREAM_REPLAY = 5
