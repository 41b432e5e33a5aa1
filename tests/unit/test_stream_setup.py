"""Streams declared while a JetStream cluster is still settling: a meta leader just elected
may not yet know enough peers to place three replicas ("no suitable peers for placement",
err_code 10005) or may not answer at all; ensure_streams asks again until its deadline. A
refusal that is not about the cluster settling is raised at once."""

from __future__ import annotations

from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, NotFoundError

from contracts.subjects import STREAMS
from services.broker import ensure_streams

NO_PEERS = BadRequestError(code=400, err_code=10005,
                           description="no suitable peers for placement")


class SettlingJetStream:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.created: list[str] = []

    async def stream_info(self, name: str) -> Any:
        raise NotFoundError(code=404)

    async def add_stream(self, config: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.created.append(config.name)


class FakeBroker:
    def __init__(self, js: SettlingJetStream) -> None:
        self.connection = self
        self.js = js

    def jetstream(self) -> SettlingJetStream:
        return self.js


async def test_streams_wait_for_a_cluster_that_cannot_place_replicas_yet() -> None:
    js = SettlingJetStream([NO_PEERS, NatsTimeoutError(), NO_PEERS])
    await ensure_streams(FakeBroker(js), replicas=3)  # type: ignore[arg-type]
    assert js.created == list(STREAMS)


async def test_a_cluster_that_never_settles_fails_the_start_at_the_deadline() -> None:
    js = SettlingJetStream([NO_PEERS] * 1_000)
    with pytest.raises(BadRequestError):
        await ensure_streams(FakeBroker(js), replicas=3, timeout_s=0.5)  # type: ignore[arg-type]


async def test_a_bad_stream_configuration_is_refused_at_once() -> None:
    js = SettlingJetStream([BadRequestError(code=400, err_code=10052,
                                            description="replicas > 1 not supported in"
                                                        " non-clustered mode")])
    with pytest.raises(BadRequestError, match="non-clustered"):
        await ensure_streams(FakeBroker(js), replicas=3, timeout_s=30)  # type: ignore[arg-type]
    assert js.failures == []
