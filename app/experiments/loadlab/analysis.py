"""Pure computations on request logs: step statistics, the knee, scaling efficiency, timelines,
time to first degraded answer, time to recover.

A request log is a DataFrame with one row per request (what the locustfile writes with
``RECSTACK_LOADTEST_REQUEST_LOG``): ``start_s`` (epoch seconds), ``name``, ``response_ms``, ``ok``
(0/1, Locust's verdict, body checks included), ``status`` (HTTP status, 0 for a connection
error), ``degraded`` (the response's reasons joined by ``;``, empty when not degraded) and
``lag_ms`` (open loop: how late the request was sent after its due time; ``response_ms``
already includes it, so latencies run from the intended send; 0 in older logs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RECOMMEND = "/recommendations"
LOG_COLUMNS = ["start_s", "name", "response_ms", "ok", "status", "degraded", "lag_ms"]
# A run whose achieved rate differs from the offered one by more than this is flagged: its
# latencies describe another load than the one asked for. With Poisson arrivals the count
# itself varies (sd sqrt(rate x seconds): 4% at 46 RPS over 12 s), so a difference is flagged
# only when it is also beyond RATE_NOISE_Z standard deviations of that noise.
RATE_TOLERANCE = 0.02
RATE_NOISE_Z = 3.0


def read_request_logs(paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate the per-process request logs, sorted by start time."""
    frames = [pd.read_csv(p, dtype={"degraded": str}, keep_default_na=False) for p in paths
              if Path(p).stat().st_size > 0]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c != "name" else str) for c in LOG_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df["degraded"] = df["degraded"].astype(str).replace("nan", "")
    df["lag_ms"] = df["lag_ms"].fillna(0.0) if "lag_ms" in df else 0.0
    return df.sort_values("start_s", kind="stable").reset_index(drop=True)


def recommendations(df: pd.DataFrame) -> pd.DataFrame:
    """Only the ``GET /recommendations`` rows (the SLO is about them)."""
    return df[df["name"].astype(str).str.startswith(RECOMMEND)]


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


@dataclass(frozen=True)
class StepStats:
    """One offered-load step, measured on the recommendations after the warm-up."""

    offered_rps: float
    achieved_rps: float
    ok_rps: float
    requests: int
    failures: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    duration_s: float
    # Answered but degraded (a stage skipped or failed): not goodput. The reasons as
    # "reason:share;..." (shares of the step's requests), flat for steps.csv.
    degraded: int = 0
    degraded_rate: float = 0.0
    good_rps: float = 0.0
    degraded_reasons: str = ""
    # Open loop: p99 of how late requests were sent after their due time (part of the latency
    # percentiles above); achieved / offered, and whether it is off (see rate_is_off).
    lag_p99_ms: float = 0.0
    delivered_ratio: float = math.nan
    rate_off: bool = False

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def step_stats(df: pd.DataFrame, offered_rps: float, warmup_s: float = 0.0) -> StepStats:
    """Throughput and latency percentiles of the recommendation requests started after the
    warm-up (the first ``warmup_s`` seconds after the first request are dropped)."""
    rec = recommendations(df)
    if len(rec):
        start = float(rec["start_s"].min()) + warmup_s
        rec = rec[rec["start_s"] >= start]
    if len(rec) == 0:
        return StepStats(offered_rps, 0.0, 0.0, 0, 0, 1.0, math.nan, math.nan, math.nan, 0.0)
    t0, t1 = float(rec["start_s"].min()), float(rec["start_s"].max())
    duration = max(t1 - t0, 1e-9)
    failures = int((rec["ok"] == 0).sum())
    lat = rec["response_ms"].to_numpy(dtype=float)
    answered = rec["ok"] != 0
    degraded = answered & rec["degraded"].astype(str).ne("")
    reasons = pd.Series([r for d in rec["degraded"][degraded] for r in str(d).split(";") if r])
    shares = (reasons.value_counts() / len(rec)).sort_index()
    lag = rec["lag_ms"].to_numpy(dtype=float) if "lag_ms" in rec else np.zeros(len(rec))
    achieved = len(rec) / duration
    ratio = achieved / offered_rps if offered_rps > 0 else math.nan
    return StepStats(
        offered_rps=offered_rps,
        achieved_rps=achieved,
        ok_rps=(len(rec) - failures) / duration,
        requests=len(rec),
        failures=failures,
        error_rate=failures / len(rec),
        p50_ms=_pct(lat, 50), p95_ms=_pct(lat, 95), p99_ms=_pct(lat, 99),
        duration_s=duration,
        degraded=int(degraded.sum()), degraded_rate=float(degraded.mean()),
        good_rps=int((answered & ~degraded).sum()) / duration,
        degraded_reasons=";".join(f"{r}:{v:.4g}" for r, v in shares.items()),
        lag_p99_ms=_pct(lag, 99),
        delivered_ratio=ratio,
        rate_off=rate_is_off(len(rec), offered_rps, duration),
    )


def rate_is_off(requests: int, offered_rps: float, duration_s: float) -> bool:
    """Whether ``requests`` in ``duration_s`` miss ``offered_rps`` by more than RATE_TOLERANCE
    and by more than Poisson noise could explain (RATE_NOISE_Z standard deviations)."""
    expected = offered_rps * duration_s
    if expected <= 0:
        return requests > 0
    gap = abs(requests - expected)
    return bool(gap > RATE_TOLERANCE * expected and gap > RATE_NOISE_Z * math.sqrt(expected))


def _noise_explains(achieved_rps: float, offered_rps: float, duration_s: float) -> bool:
    """Whether Poisson arrivals could fall this short by chance (within RATE_NOISE_Z sd): a
    short step of a few requests a second is not "undelivered" for a noisy count."""
    expected = offered_rps * duration_s
    return expected > 0 and expected - achieved_rps * duration_s <= RATE_NOISE_Z * math.sqrt(
        expected)


def breaks_slo(step: StepStats, slo_ms: float, max_error_rate: float = 0.01,
               min_delivered: float = 0.9, max_degraded_rate: float | None = None) -> str | None:
    """Why a step is past the knee (p99 over the SLO, errors, degraded answers - a stage skipped
    is not goodput - or the offered load not delivered), or None when it is within the SLO.
    ``max_degraded_rate`` defaults to ``max_error_rate``."""
    if step.requests == 0:
        return "no requests completed"
    if not step.p99_ms <= slo_ms:
        return f"p99 {step.p99_ms:.0f} ms > SLO {slo_ms:.0f} ms"
    if step.error_rate > max_error_rate:
        return f"error rate {step.error_rate:.1%} > {max_error_rate:.1%}"
    max_degraded = max_error_rate if max_degraded_rate is None else max_degraded_rate
    if step.degraded_rate > max_degraded:
        return (f"degraded {step.degraded_rate:.1%} > {max_degraded:.1%} "
                f"({step.degraded_reasons})")
    if (step.achieved_rps < min_delivered * step.offered_rps
            and not _noise_explains(step.achieved_rps, step.offered_rps, step.duration_s)):
        return (f"delivered {step.achieved_rps:.0f} of {step.offered_rps:.0f} RPS offered "
                f"(< {min_delivered:.0%})")
    return None


def find_knee(steps: list[StepStats], slo_ms: float, max_error_rate: float = 0.01,
              min_delivered: float = 0.9) -> StepStats | None:
    """The knee: the step with the highest achieved RPS among those within the SLO, or None."""
    within = [s for s in steps if breaks_slo(s, slo_ms, max_error_rate, min_delivered) is None]
    return max(within, key=lambda s: s.achieved_rps) if within else None


def scaling_efficiency(knee_rps: Mapping[int, float]) -> dict[int, float]:
    """RPS(n) / (n * RPS(1)) per replica count n (needs the 1-replica figure)."""
    base = knee_rps.get(1)
    if not base or base <= 0 or math.isnan(base):
        return {n: math.nan for n in knee_rps}
    return {n: rps / (n * base) for n, rps in sorted(knee_rps.items())}


# ---------------------------------------------------------------------------------- timelines


def timeline(df: pd.DataFrame, t0: float, t_end: float | None = None) -> pd.DataFrame:
    """Per-second figures of the recommendation requests, by start time, from ``t0``.

    Columns: ``t_s`` (seconds since t0), ``rps``, ``ok_rps`` (answered, not failed),
    ``good_rps`` (answered, not degraded), ``error_rate``, ``http_5xx``, ``shed_503``,
    ``degraded_rate``, ``p50_ms``, ``p99_ms``, ``p99_ok_ms`` (answered ones) and one
    ``degraded_<reason>`` rate column per reason seen.
    """
    rec = recommendations(df)
    last = t_end if t_end is not None else (float(rec["start_s"].max()) if len(rec) else t0)
    n = max(int(math.floor(last - t0)) + 1, 0)
    sec = np.floor(rec["start_s"].to_numpy(dtype=float) - t0).astype(int)
    rec = rec.assign(sec=sec)
    rec = rec[(rec["sec"] >= 0) & (rec["sec"] < n)]
    reasons = sorted({r for d in rec["degraded"] if d for r in str(d).split(";") if r})
    rows = []
    for s, group in (rec.groupby("sec") if len(rec) else []):
        ok = group["ok"] == 1
        degraded = group["degraded"].astype(bool)
        lat = group["response_ms"].to_numpy(dtype=float)
        row = {
            "t_s": int(s), "rps": len(group), "ok_rps": int(ok.sum()),
            "good_rps": int((ok & ~degraded).sum()),
            "error_rate": float((~ok).mean()),
            "http_5xx": int((group["status"] >= 500).sum()),
            "shed_503": int((group["status"] == 503).sum()),
            "degraded_rate": float(degraded.mean()),
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "p99_ok_ms": _pct(group.loc[ok, "response_ms"].to_numpy(dtype=float), 99),
        }
        for reason in reasons:
            row[f"degraded_{reason}"] = float(
                group["degraded"].map(lambda d, r=reason: r in str(d).split(";")).mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    full = pd.DataFrame({"t_s": np.arange(n)})
    out = full.merge(out, on="t_s", how="left") if len(out) else full
    for col in ("rps", "ok_rps", "good_rps", "http_5xx", "shed_503"):
        out[col] = out[col].fillna(0).astype(int) if col in out else 0
    for col in ("error_rate", "degraded_rate"):
        out[col] = out[col].fillna(0.0) if col in out else 0.0
    for col in ("p50_ms", "p99_ms", "p99_ok_ms"):
        if col not in out:
            out[col] = math.nan
    return out


def first_degraded_s(df: pd.DataFrame, fault_start: float,
                     ignore: frozenset[str] | set[str] = frozenset()) -> float:
    """Seconds from the fault to the first recommendation answered failed, or degraded for a
    reason not in ``ignore`` (e.g. the reasons already seen before the fault: on a loaded machine
    a few answers are late anyway), by the time the answer arrived; NaN when none was."""
    rec = recommendations(df)
    rec = rec[rec["start_s"] >= fault_start]
    new_reason = rec["degraded"].map(
        lambda d: any(r and r not in ignore for r in str(d).split(";")))
    after = rec[(rec["ok"] == 0) | new_reason]
    if len(after) == 0:
        return math.nan
    done = after["start_s"].to_numpy(dtype=float) + after["response_ms"].to_numpy(dtype=float) / 1000
    return max(float(done.min()) - fault_start, 0.0)


def reasons_seen(df: pd.DataFrame, start: float, end: float) -> set[str]:
    """The ``degraded`` reasons of the recommendations started in ``[start, end)``."""
    rec = recommendations(df)
    w = rec[(rec["start_s"] >= start) & (rec["start_s"] < end)]
    return {r for d in w["degraded"] for r in str(d).split(";") if r}


@dataclass(frozen=True)
class Baseline:
    """What "healthy" looked like before the fault (per second)."""

    rps: float
    good_fraction: float
    p99_ms: float


def baseline(tl: pd.DataFrame, start_s: float, end_s: float) -> Baseline:
    """Mean per-second throughput and non-degraded answer fraction in ``[start_s, end_s)``."""
    window = tl[(tl["t_s"] >= start_s) & (tl["t_s"] < end_s) & (tl["rps"] > 0)]
    if len(window) == 0:
        return Baseline(math.nan, math.nan, math.nan)
    return Baseline(
        rps=float(window["rps"].mean()),
        good_fraction=float(window["good_rps"].sum() / window["rps"].sum()),
        p99_ms=float(window["p99_ms"].median()),
    )


def recovery_s(tl: pd.DataFrame, fault_end_s: float, base: Baseline, hold_s: int = 3,
               rps_fraction: float = 0.9, good_slack: float = 0.02) -> float:
    """Seconds after the fault ended until the service is healthy again for ``hold_s`` seconds
    in a row: throughput at least ``rps_fraction`` of the baseline, no failed requests, and the
    non-degraded fraction within ``good_slack`` of the baseline. NaN if it never is in the run.

    Counted from the second the fault ended (its fractional part ignored), so 0 means healthy
    from the first whole second after the fault.
    """
    if math.isnan(base.rps):
        return math.nan
    first = int(math.floor(fault_end_s))
    after = tl[tl["t_s"] >= first].sort_values("t_s")
    healthy = (
        (after["rps"] >= rps_fraction * base.rps)
        & (after["error_rate"] == 0)
        & (after["good_rps"] >= (base.good_fraction - good_slack) * after["rps"])
    ).to_numpy()
    seconds = after["t_s"].to_numpy()
    for i in range(len(healthy) - hold_s + 1):
        if healthy[i:i + hold_s].all():
            return float(max(seconds[i] - fault_end_s, 0.0))
    return math.nan


def window_counts(df: pd.DataFrame, start: float, end: float) -> dict[str, float]:
    """Counts of the recommendation requests started in ``[start, end)`` (epoch seconds)."""
    rec = recommendations(df)
    w = rec[(rec["start_s"] >= start) & (rec["start_s"] < end)]
    n = len(w)
    failed = int((w["ok"] == 0).sum())
    return {
        "requests": n,
        "failed": failed,
        "failed_fraction": failed / n if n else math.nan,
        "http_5xx": int((w["status"] >= 500).sum()),
        "shed_503": int((w["status"] == 503).sum()),
        "degraded": int(w["degraded"].astype(bool).sum()),
        "degraded_fraction": float(w["degraded"].astype(bool).mean()) if n else math.nan,
    }
