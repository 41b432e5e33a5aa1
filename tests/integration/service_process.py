"""Start a service as its own process (``python -m <package>``), as production does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.embedded import free_port

# Every service process a test started and has not stopped: a fixture whose set-up failed
# half-way cannot leak one past the session (tests/conftest.py kills what is left).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def kill_leftovers() -> list[str]:
    """Kill every service process still running; what was killed, for the session's log."""
    killed = []
    for pid, process in list(_STARTED.items()):
        if process.poll() is None:
            process.kill()
            process.wait()
            killed.append(f"{pid} {' '.join(map(str, process.args))}")  # type: ignore[arg-type]
        _STARTED.pop(pid, None)
    return killed


@dataclass
class ServiceProcess:
    package: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> ServiceProcess:
        prefix = self.package.removesuffix("_service").upper()
        env = {**self.env, f"{prefix}_HTTP_PORT": str(self.port)}
        self.log_path = log_dir / f"{self.package}-{self.port}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.package, "serve"],
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        _STARTED[self.process.pid] = self.process
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.package} exited early:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.package} not ready in {timeout_s}s:\n{self.logs()}")

    def stop(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.package} did not stop on SIGTERM:\n{self.logs()}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""
