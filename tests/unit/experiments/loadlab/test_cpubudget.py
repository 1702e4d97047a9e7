"""CPU budgets per replica: quota files, moving processes in and back, the CFS counters; on a
directory laid out like a cgroup hierarchy (v1 and v2), and once on the real one when this
machine lets us (root, a cpu controller)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.experiments.loadlab import cpubudget
from app.experiments.loadlab.cpubudget import CpuBudget, CpuBudgetError, ThrottleStats
from tests.conftest import REQUIRE_SERVICES


@pytest.fixture
def fake_cgroupfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a plain directory a cgroup's files are real files: remove them with it."""
    monkeypatch.setattr(cpubudget, "_remove", shutil.rmtree)


def _fake_root(tmp_path: Path, version: int) -> Path:
    root = tmp_path / f"v{version}"
    root.mkdir()
    (root / "cgroup.procs").write_text("")
    if version == 2:
        (root / "cgroup.subtree_control").write_text("")
    return root


def test_v1_limit_writes_quota_and_moves_the_process_and_release_moves_it_back(
        tmp_path: Path, fake_cgroupfs: None) -> None:
    root = _fake_root(tmp_path, 1)
    budget = CpuBudget(0.6, root, 1)
    budget.check_writable()
    budget.limit("api-0", [os.getpid()])
    group = root / "recstack" / "api-0"
    assert (group / "cpu.cfs_period_us").read_text() == "10000"
    assert (group / "cpu.cfs_quota_us").read_text() == "6000"
    assert (group / "cgroup.procs").read_text() == str(os.getpid())
    budget.release()
    assert not (root / "recstack").exists()
    # back where /proc says it was (the cpu hierarchy's path of this process, under root)
    origin = cpubudget._cgroup_of(os.getpid(), root, 1)
    assert origin is not None and (origin / "cgroup.procs").read_text() == str(os.getpid())


def test_v2_limit_writes_cpu_max_and_enables_the_controller(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, 2)
    budget = CpuBudget(0.25, root, 2)
    budget.check_writable()
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    (root / "recstack" / "cgroup.subtree_control").write_text("cpu")  # the kernel's echo
    budget.limit("ranking-1", [])
    assert (root / "recstack" / "ranking-1" / "cpu.max").read_text() == "2500 10000"


def test_a_tiny_budget_still_gets_the_kernels_minimum_quota(tmp_path: Path) -> None:
    budget = CpuBudget(0.01, _fake_root(tmp_path, 1), 1)
    budget.limit("api-0", [])
    assert (budget.group("api-0") / "cpu.cfs_quota_us").read_text() == "1000"


def test_stats_parse_both_versions_and_subtract(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, 1)
    budget = CpuBudget(0.5, root, 1)
    budget.limit("api-0", [])
    (budget.group("api-0") / "cpu.stat").write_text(
        "nr_periods 200\nnr_throttled 50\nthrottled_time 2500000000\n")
    stats = budget.stats("api-0")
    assert stats == ThrottleStats(200, 50, 2.5)
    delta = stats - ThrottleStats(100, 40, 2.0)
    assert delta.throttled_fraction == pytest.approx(0.1)
    assert cpubudget._v2_stats("nr_periods 10\nnr_throttled 5\nthrottled_usec 1500000\n") \
        == ThrottleStats(10, 5, 1.5)
    assert ThrottleStats().throttled_fraction == 0.0
    assert budget.stats("never-made") == ThrottleStats()


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(CpuBudgetError, match="> 0"):
        CpuBudget.detect(0)


def _real_budget(cpus: float) -> CpuBudget:
    try:
        return CpuBudget.detect(cpus)
    except CpuBudgetError as exc:
        if REQUIRE_SERVICES:  # the scale experiment's CPU budgets are part of what is tested
            raise
        pytest.skip(f"no writable cgroup cpu controller here: {exc}")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_kernel_holds_a_busy_process_to_its_budget() -> None:
    budget = _real_budget(0.2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with budget:
            budget.limit("probe", [busy.pid])
            start_cpu, start = _cpu_s(busy.pid), time.monotonic()
            time.sleep(1.5)
            cores = (_cpu_s(busy.pid) - start_cpu) / (time.monotonic() - start)
            stats = budget.stats("probe")
        # 0.2 cores allowed; unlimited it would take a whole core (less only if the machine is
        # busier than that; the throttling counter shows the quota was what held it).
        assert cores < 0.35
        assert stats.throttled > 0
        assert not budget.group("probe").exists()
        assert "recstack" not in Path(f"/proc/{busy.pid}/cgroup").read_text()
    finally:
        busy.kill()
        busy.wait()
