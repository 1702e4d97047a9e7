"""The promotion gate: may a newly trained pair of models replace the champion?

In:  the challenger's and the champion's ranker metrics on the SAME holdout rows, the
     challenger's holdout scores, its measured batch latency and the problems found when its
     artifacts were loaded back from MLflow.
Out: a :class:`Verdict` (promote or not, and the one-line reason that is logged and tagged).

Pure functions: the MLflow side (aliases, tags, loading back) is in ``registry.py`` and the
orchestration in ``train.py``, so every decision here is unit-tested without a server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from recstack.settings import GateSettings

LOWER_IS_BETTER = {"logloss"}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision; ``reason`` is one line, fit for a log line and an MLflow tag."""

    promote: bool
    reason: str
    failures: list[str] = field(default_factory=list)
    aborted: bool = False  # the gate could not judge (e.g. MLflow unreachable): nothing moved

    @property
    def decision(self) -> str:
        if self.aborted:
            return "aborted"
        return "promoted" if self.promote else "rejected"


def aborted(why: str) -> Verdict:
    """The gate gives up without a decision: the champion stays, ``why`` is logged and tagged.

    Why not "champion unusable": a registry that is briefly down (a 5xx, a reset connection)
    says nothing about the champion; promoting then would replace a good model by accident.
    """
    return Verdict(False, f"gate aborted, champion unchanged: {why}", aborted=True)


def measure_latency_ms(
    predict: Callable[[np.ndarray], object], rows: np.ndarray, repeats: int
) -> dict[str, float]:
    """Wall and CPU milliseconds of ``predict(rows)`` over ``repeats`` calls (after 5 warm-up
    calls, which page in the model and the allocator): median and p99 of each.

    CPU time is this thread's (``time.thread_time``): the ranker predicts on the calling
    thread (``num_threads=1``), so it is the model's own cost, which neighbours on a shared
    machine do not inflate; wall time is what a request would have seen right now.
    """
    for _ in range(5):
        predict(rows)
    wall = np.empty(repeats)
    cpu = np.empty(repeats)
    for i in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        predict(rows)
        wall[i] = (time.perf_counter() - t0) * 1000.0
        cpu[i] = (time.thread_time() - c0) * 1000.0
    return {"median_ms": float(np.median(wall)), "p99_ms": float(np.percentile(wall, 99)),
            "cpu_median_ms": float(np.median(cpu)), "cpu_p99_ms": float(np.percentile(cpu, 99))}


def latency_within_budget(
    predict: Callable[[np.ndarray], object], rows: np.ndarray, gate: GateSettings,
    attempts: int = 3,
) -> dict[str, float]:
    """:func:`measure_latency_ms`, repeated (up to ``attempts`` times) while the CPU p99 is
    over the budget; returns the attempt with the lowest CPU p99.

    Why CPU time and retries: the gate judges the artifact, not the machine's momentary load.
    On this shared 2-core machine (load average 10 at times) the wall p99 of a 150-tree
    booster over 500 rows was 26-29 ms while its median was 1.1 ms; a slow model is slow in
    CPU time on every attempt, a noisy neighbour rarely lasts three.
    """
    best: dict[str, float] | None = None
    for _ in range(attempts):
        got = measure_latency_ms(predict, rows, gate.latency_repeats)
        if best is None or got["cpu_p99_ms"] < best["cpu_p99_ms"]:
            best = got
        if best["cpu_p99_ms"] <= gate.latency_p99_ms:
            break
    assert best is not None
    return best


def sanity_failures(
    scores: np.ndarray,
    latency_p99_ms: float,
    artifact_problems: list[str],
    gate: GateSettings,
) -> list[str]:
    """Everything that disqualifies a challenger whatever its metrics (empty: all passed)."""
    failures = list(artifact_problems)
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        failures.append("no holdout scores")
    else:
        n_bad = int((~np.isfinite(s)).sum())
        if n_bad:
            failures.append(f"{n_bad} NaN/inf holdout scores")
        finite = s[np.isfinite(s)]
        spread = float(finite.std()) if len(finite) else 0.0
        if spread < gate.min_score_std:
            failures.append(f"score spread {spread:.2g} < {gate.min_score_std:.2g}")
        distinct = len(np.unique(finite))
        if distinct < gate.min_distinct_scores:
            failures.append(f"{distinct} distinct scores < {gate.min_distinct_scores}")
    if not math.isfinite(latency_p99_ms) or latency_p99_ms > gate.latency_p99_ms:
        failures.append(
            f"{gate.latency_rows}-row batch CPU p99 {latency_p99_ms:.2f} ms "
            f"> {gate.latency_p99_ms} ms"
        )
    return failures


def compare(
    challenger: Mapping[str, float], champion: Mapping[str, float], gate: GateSettings,
    against: str = "champion",
) -> tuple[bool, str]:
    """Does the challenger beat ``against`` (the champion, or the popularity baseline) by
    ``gate.margin`` on ``gate.metric`` without losing more than ``gate.max_ndcg_drop``
    NDCG@10? Returns (wins, why)."""
    name = gate.metric
    new, old = float(challenger.get(name, math.nan)), float(champion.get(name, math.nan))
    if not math.isfinite(new):
        return False, f"challenger {name} is {new}"
    if not math.isfinite(old):
        return True, f"{against} {name} is {old} on this holdout; challenger {name}={new:.4f}"
    gain = old - new if name in LOWER_IS_BETTER else new - old
    if gain < gate.margin:
        return False, (f"{name} {new:.4f} vs {against} {old:.4f}: gain {gain:+.4f} "
                       f"< margin {gate.margin}")
    ndcg_new = float(challenger.get("ndcg_at_10", math.nan))
    ndcg_old = float(champion.get("ndcg_at_10", math.nan))
    ndcg_drop = ndcg_old - ndcg_new
    if math.isfinite(ndcg_drop) and ndcg_drop > gate.max_ndcg_drop:
        return False, (f"ndcg_at_10 {ndcg_new:.4f} drops {ndcg_drop:.4f} "
                       f"> {gate.max_ndcg_drop} below {against} {ndcg_old:.4f}")
    return True, f"{name} {new:.4f} vs {against} {old:.4f}: gain {gain:+.4f} >= {gate.margin}"


def decide(
    failures: list[str],
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    gate: GateSettings,
    champion_problem: str | None = None,
    *,
    baseline: Mapping[str, float] | None = None,
) -> Verdict:
    """The verdict: sanity first, then a fair fight against the champion, or - with no champion
    yet, or a champion whose artifact is genuinely broken (``champion_problem``) - against the
    popularity ``baseline`` on the same holdout rows: no model is ever promoted without a
    comparison (``baseline`` None then means: not promoted).
    """
    if failures:
        return Verdict(False, "sanity checks failed: " + "; ".join(failures), failures)
    if champion is not None and champion_problem is None:
        wins, why = compare(challenger, champion, gate)
        return Verdict(wins, why)
    situation = ("first model" if champion_problem is None
                 else f"champion unusable ({champion_problem})")
    if baseline is None:
        return Verdict(False, f"{situation}, and no popularity baseline to compare with")
    wins, why = compare(challenger, baseline, gate, against="popularity")
    return Verdict(wins, f"{situation}: {why}")
