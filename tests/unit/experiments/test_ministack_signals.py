"""A drift experiment stopped by SIGTERM stops the servers its mini stack started."""

from __future__ import annotations

import os
import signal
import time

import pytest

from app.experiments.drift.ministack import MiniStack


def test_sigterm_unwinds_the_stack_and_stops_its_children(tmp_path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    stack = MiniStack(tmp_path, dict(os.environ))
    with pytest.raises(KeyboardInterrupt), stack:
        stack.spawn("sleeper", ["sleep", "60"])
        child = stack.procs["sleeper"]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert child.poll() is not None  # stopped, not orphaned
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
