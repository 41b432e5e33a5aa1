"""A durable consumer set up while its JetStream cluster elects a leader (a node just died or
came back; `make faults`) waits and asks again instead of failing the service's start: the
request times out or is answered 503 for a few seconds, then succeeds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError, ServiceUnavailableError

from services.consumer import ACK, DurableConsumer


class ElectingJetStream:
    """Fails the first `failures` set-up requests the way a cluster mid-election does."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.add_consumer_calls = 0
        self.subscribed = False

    async def add_consumer(self, stream: str, config: Any) -> None:
        self.add_consumer_calls += 1
        if self.failures:
            raise self.failures.pop(0)

    async def pull_subscribe(self, subject: str, **_: Any) -> Any:
        self.subscribed = True
        return IdleSubscription()


class IdleSubscription:
    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        await asyncio.sleep(0.01)
        raise NatsTimeoutError

    async def unsubscribe(self) -> None:
        return None


class FakeConnection:
    def __init__(self, js: ElectingJetStream) -> None:
        self.js = js

    def jetstream(self) -> ElectingJetStream:
        return self.js


async def handle(msgs: Any) -> list[Any]:
    return [ACK for _ in msgs]


def consumer(js: ElectingJetStream, setup_timeout_s: float = 30) -> DurableConsumer:
    return DurableConsumer(FakeConnection(js), stream="USAGE",  # type: ignore[arg-type]
                           subject="usage.v1.recorded", durable="ledger-usage",
                           handle_batch=handle, setup_timeout_s=setup_timeout_s)


@pytest.mark.parametrize("failure", [NatsTimeoutError(), ServiceUnavailableError(code=503)],
                         ids=["timeout", "503"])
async def test_a_consumer_set_up_during_a_leader_election_waits_for_it(
        failure: BaseException) -> None:
    js = ElectingJetStream([failure, failure])
    durable = consumer(js)
    await durable.start()
    assert (js.add_consumer_calls, js.subscribed) == (3, True)
    await durable.stop()


async def test_a_cluster_that_never_answers_still_fails_the_start_in_the_end() -> None:
    js = ElectingJetStream([NatsTimeoutError()] * 100)
    with pytest.raises(NatsTimeoutError):
        await consumer(js, setup_timeout_s=0.5).start()


async def test_a_refusal_that_is_not_an_outage_is_not_retried() -> None:
    js = ElectingJetStream([NotFoundError(code=404)])  # e.g. the stream does not exist
    durable = consumer(js)
    await durable.start()  # logged as "config not updated"; pull_subscribe then decides
    assert (js.add_consumer_calls, js.subscribed) == (1, True)
    await durable.stop()
