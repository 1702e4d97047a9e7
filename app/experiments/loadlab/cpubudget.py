"""A CPU budget per replica, the way an orchestrator gives each pod a CPU limit: a Linux cgroup
per replica with a CFS quota (cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, or v2
``cpu.max``).

Why the scaling experiment wants it: on a laptop, one unlimited replica can already take a
whole core and the load generator, nginx and Redis share the same cores, so adding a replica
adds a process but no CPU; the efficiency then measures the machine's contention, not the
service. With a budget of ``cpus`` per replica, n replicas get n x ``cpus`` — horizontal
scaling as a cluster sees it — as long as n x ``cpus`` plus the generator's share fits the
machine (the experiment reports both figures, so the reader can see that it did).

The period is short (10 ms, not the kernel's default 100 ms): a replica that spends its quota
early in a period waits at most the rest of that period, so the throttling shows in p99 as
milliseconds, not tens of milliseconds.

Processes are moved into ``<root>/recstack/<name>`` and moved back to the cgroup they came from
on ``release()``; nothing else on the machine is touched. Needs root (or a delegated cgroup).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PERIOD_US = 10_000
V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


class CpuBudgetError(RuntimeError):
    """The budget cannot be applied here (no writable cgroup cpu controller)."""


@dataclass(frozen=True)
class ThrottleStats:
    """A cgroup's CFS counters: enforcement periods, those in which the quota ran out, and the
    time its processes waited for the next period."""

    periods: int = 0
    throttled: int = 0
    throttled_s: float = 0.0

    def __sub__(self, other: ThrottleStats) -> ThrottleStats:
        return ThrottleStats(self.periods - other.periods, self.throttled - other.throttled,
                             self.throttled_s - other.throttled_s)

    @property
    def throttled_fraction(self) -> float:
        """Share of the periods in which the replica used its whole quota."""
        return self.throttled / self.periods if self.periods > 0 else 0.0


def _parse_stats(text: str, wait_key: str, wait_unit_s: float) -> ThrottleStats:
    """``cpu.stat`` as counters; the waited time is ``throttled_time`` (ns) in v1 and
    ``throttled_usec`` in v2."""
    values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return ThrottleStats(int(values.get("nr_periods", 0)), int(values.get("nr_throttled", 0)),
                         int(values.get(wait_key, 0)) * wait_unit_s)


def _v1_stats(text: str) -> ThrottleStats:
    return _parse_stats(text, "throttled_time", 1e-9)


def _v2_stats(text: str) -> ThrottleStats:
    return _parse_stats(text, "throttled_usec", 1e-6)


@dataclass
class CpuBudget:
    """Per-replica CPU quotas under one cgroup hierarchy (v1 cpu controller or v2 unified).

    ``root`` is the hierarchy's mount point; tests pass a temporary directory laid out like one.
    """

    cpus: float
    root: Path
    version: int
    period_us: int = PERIOD_US
    _origins: dict[int, Path] = field(default_factory=dict)
    _groups: set[str] = field(default_factory=set)

    @classmethod
    def detect(cls, cpus: float) -> CpuBudget:
        """The budget on this machine's cgroup hierarchy, or ``CpuBudgetError`` saying why not."""
        if cpus <= 0:
            raise CpuBudgetError(f"a CPU budget must be > 0 cores, got {cpus}")
        if (V1_CPU / "cpu.cfs_quota_us").exists():
            budget = cls(cpus, V1_CPU, 1)
        elif "cpu" in _read(V2_ROOT / "cgroup.controllers").split():
            budget = cls(cpus, V2_ROOT, 2)
        else:
            raise CpuBudgetError("no cgroup cpu controller at /sys/fs/cgroup (v1 cpu or v2 cpu.max)")
        budget.check_writable()
        return budget

    @property
    def base(self) -> Path:
        return self.root / "recstack"

    def check_writable(self) -> None:
        try:
            self.base.mkdir(exist_ok=True)
            if self.version == 2:
                _enable_cpu_controller(self.root, self.base)
        except OSError as exc:
            raise CpuBudgetError(f"cannot create a cgroup under {self.root}: {exc} "
                                 "(needs root or a delegated cgroup)") from exc

    def group(self, name: str) -> Path:
        return self.base / name

    def limit(self, name: str, pids: list[int]) -> None:
        """Put ``pids`` (whole processes: all their threads; children forked later follow) in
        the cgroup ``name`` with a quota of ``cpus`` cores. Idempotent: call it again after a
        replica restarted, with the new pid."""
        path = self.group(name)
        if name not in self._groups:  # the quota once; only the pids change between calls
            path.mkdir(parents=True, exist_ok=True)
            quota = max(int(self.cpus * self.period_us), 1000)
            if self.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (path / "cpu.max").write_text(f"{quota} {self.period_us}")
            self._groups.add(name)
        for pid in pids:
            if pid not in self._origins:
                origin = _cgroup_of(pid, self.root, self.version)
                if origin is None:
                    continue  # gone
                self._origins[pid] = origin
            _move(pid, path)

    def stats(self, name: str) -> ThrottleStats:
        """The CFS counters of ``name`` (zeros when it does not exist)."""
        text = _read(self.group(name) / "cpu.stat")
        return _v1_stats(text) if self.version == 1 else _v2_stats(text)

    def release(self) -> None:
        """Move every process back where it came from and remove the cgroups."""
        for pid, origin in self._origins.items():
            try:
                _move(pid, origin)
            except OSError:
                pass  # the process is gone
        self._origins.clear()
        for name in sorted(self._groups):
            try:
                _remove(self.group(name))
            except OSError as exc:
                logger.warning("could not remove cgroup %s: %s", self.group(name), exc)
        self._groups.clear()
        try:
            _remove(self.base)
        except OSError:
            pass  # another run's groups are still there

    def __enter__(self) -> CpuBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _remove(group: Path) -> None:
    """Remove an empty cgroup (its files are the kernel's: rmdir is enough)."""
    group.rmdir()


def _move(pid: int, group: Path) -> None:
    (group / "cgroup.procs").write_text(str(pid))


def _cgroup_of(pid: int, root: Path, version: int) -> Path | None:
    """The cgroup directory ``pid`` is in now, within the hierarchy at ``root``."""
    text = _read(Path(f"/proc/{pid}/cgroup"))
    if not text:
        return None
    for line in text.splitlines():
        _, controllers, rel = line.split(":", 2)
        if (version == 1 and "cpu" in controllers.split(",")) or (version == 2 and controllers == ""):
            return root / rel.lstrip("/")
    return root


def _enable_cpu_controller(root: Path, base: Path) -> None:
    """cgroup v2: children of ``base`` get ``cpu.max`` only with ``+cpu`` in the subtree
    control of ``root`` and ``base``."""
    for parent in (root, base):
        control = parent / "cgroup.subtree_control"
        if "cpu" not in _read(control).split():
            control.write_text("+cpu")
