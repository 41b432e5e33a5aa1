"""The stack runner refuses to start a second stack on the same run directory, so a second
`make run` can never stop or take over the servers of the first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.runner import acquire_run_lock


def test_a_second_stack_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    lock = acquire_run_lock(tmp_path)
    assert lock is not None
    try:
        env = {**os.environ, "RUN_DIR": str(tmp_path)}
        env.pop("DATABASE_URL", None)
        env.pop("NATS_URL", None)
        result = subprocess.run([sys.executable, "-m", "services.runner"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 3
        assert "already running" in result.stderr and str(os.getpid()) in result.stderr
        assert not (tmp_path / "pgdata").exists()  # nothing was started
    finally:
        lock.close()


def test_the_lock_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    first = acquire_run_lock(tmp_path)
    assert first is not None
    first.close()
    second = acquire_run_lock(tmp_path)
    assert second is not None
    second.close()
