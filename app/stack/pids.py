"""Which processes belong to the stack: pid records for `down`, and reaping what a dead supervisord left.

A program's pid alone is not enough (pids are reused): each record keeps the process start time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import psutil

from recstack.settings import Settings
from app.stack.paths import StackPaths
from app.stack.services import STACK_MARKER_ENV
from app.stack.supervisor import ProcessInfo, Supervisor

logger = logging.getLogger(__name__)


def stale_supervisord(paths: StackPaths) -> int | None:
    """The pid in our pid file if it is a live supervisord started with our config."""
    try:
        pid = int(paths.supervisord_pid.read_text().strip())
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if "supervisord" in cmdline and str(paths.supervisord_conf) in cmdline else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> None:
    """Wait for ``pids`` to exit; SIGKILL the process group of any that outlive the timeout."""
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in (p for p in pids if alive(p)):
        logger.warning("pid %d did not exit within %.0fs; killing it", pid, timeout_s)
        try:
            if os.getpgid(pid) == pid:  # supervisord puts each program in its own group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def record_pids(
    settings: Settings, sup: Supervisor, infos: list[ProcessInfo] | None = None
) -> None:
    """Remember every pid of the stack (with its start time, against pid reuse) for `down`."""
    paths = StackPaths.of(settings)
    records: dict[str, list[float]] = {}
    for name, pid in [("supervisord", sup.pid())] + [
        (i.name, i.pid) for i in (infos if infos is not None else sup.processes()) if i.pid
    ]:
        try:
            records[name] = [pid, psutil.Process(pid).create_time()]
        except psutil.Error:
            continue
    tmp = paths.pids_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, paths.pids_file)


def recorded_processes(settings: Settings) -> list[psutil.Process]:
    """Processes named in pids.json that are still the same processes (same start time)."""
    path = StackPaths.of(settings).pids_file
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    found = []
    for pid, created in records.values():
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - created) < 0.01 and alive(proc.pid):
                found.append(proc)
        except (psutil.Error, TypeError, ValueError):
            continue
    return found


def reap_orphans(settings: Settings, timeout_s: float) -> None:
    """Terminate what a dead supervisord left: recorded pids, and processes with our marker.

    Both, because redis-server rewrites its environment (proctitle) and a program restarted by
    supervisord after the last recording has a pid we never saw.
    """
    run_dir = str(settings.run_dir)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    orphans: list[psutil.Process] = [p for p in recorded_processes(settings) if p.pid not in mine]
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in mine:
            continue
        try:
            if (
                proc.environ().get(STACK_MARKER_ENV) == run_dir
                and proc not in orphans
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                orphans.append(proc)
        except psutil.Error:
            continue
    if not orphans:
        return
    logger.warning("terminating %d orphaned stack processes", len(orphans))
    for proc in orphans:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(orphans, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
