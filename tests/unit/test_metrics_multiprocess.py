"""/metrics is right when several processes serve one port: with PROMETHEUS_MULTIPROC_DIR
set, any process answers a scrape with the requests of all of them; scrape-time figures are
added to it, and one failing source does not hide the others."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from services.http.metrics import scrape

RECORD = """
import sys
from services.http.metrics import record_request
for _ in range(int(sys.argv[1])):
    record_request(method="GET", route="/v1/things", status=200, duration_s=0.01)
"""
SCRAPE = """
import asyncio
from services.http.metrics import scrape
print(asyncio.run(scrape([])).decode())
"""


def python(code: str, *args: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout


def requests_counted(text: str) -> float:
    found = re.search(r'^http_requests_total\{method="GET",route="/v1/things",status="200"\}'
                      r" (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def test_a_scrape_of_any_process_counts_the_requests_of_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    python(RECORD, "3", env=env)
    python(RECORD, "4", env=env)
    assert requests_counted(python(SCRAPE, env=env)) == 7


def test_scrape_time_figures_are_added_and_a_failing_source_hides_nothing() -> None:
    async def lag() -> Sequence[Metric]:
        family = GaugeMetricFamily("test_lag_seconds", "a figure read when scraped")
        family.add_metric([], 2.5)
        return [family]

    async def broken() -> Sequence[Metric]:
        raise ConnectionError("database gone")

    text = asyncio.run(scrape([broken, lag])).decode()
    assert re.search(r"^test_lag_seconds 2\.5$", text, re.MULTILINE)
    assert re.search(r'^metrics_scrape_collector_failed\{collector="[^"]*broken"\} 1\.0$', text,
                     re.MULTILINE)
