"""Fault points: places where the fault tests (`make faults`, tests/faults) make a service
process die at an exact moment that a signal sent from outside could only hit by luck, such
as after a commit and before the publish that follows it.

A point fires only when armed by the FAULT_INJECT setting, which APP_ENV=production refuses
(ServiceSettings.require_production_secrets). Firing is `os._exit`: no clean-up, no flush, no
`finally`, as a SIGKILL or a power cut would leave the process.
"""

from __future__ import annotations

import os
from typing import Final, Literal

import structlog

log = structlog.get_logger(__name__)

# Each point, and where it is:
# - outbox.before_publish: OutboxRelay.relay_once, rows committed by a use case and claimed,
#   nothing published yet (services/outbox.py).
FaultPoint = Literal["outbox.before_publish"]
# An exit code no service uses otherwise, so a test can tell the point fired.
FAULT_EXIT_CODE: Final = 86

_armed: set[str] = set()


def arm(point: FaultPoint | None) -> None:
    """Arm `point` for this process (None: none). Called once, at start-up, from settings."""
    _armed.clear()
    if point is not None:
        _armed.add(point)
        log.warning("fault point armed: this process will exit when it is reached",
                    fault_point=point)


def reach(point: FaultPoint) -> None:
    """The code passes `point`: exit at once if it is armed."""
    if point in _armed:
        log.warning("fault point reached; exiting", fault_point=point,
                    exit_code=FAULT_EXIT_CODE)
        os._exit(FAULT_EXIT_CODE)
