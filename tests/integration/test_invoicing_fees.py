"""A postpay account's recurring fees, charged by the ledger, are invoiced with its usage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from contracts.ledger import EntryPosted
from contracts.subjects import LEDGER_ENTRY_POSTED
from tests.conftest import Infra
from tests.integration.invoicing_fixtures import eventually, publish_account, publish_usage, query
from tests.integration.service_process import ServiceProcess
from tests.integration.test_invoicing_service import operator, run_billing

pytestmark = pytest.mark.integration
JUL = datetime(2025, 7, 17, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def service(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess("invoicing_service", infra.service_env(
        OUTBOX_POLL_INTERVAL_S="0.2", RECURRING_SCHEDULER="false")).start(
        Path(tmp_path_factory.mktemp("invoicing-fees")))
    process.wait_ready()
    try:
        yield process
    finally:
        process.stop()


async def test_a_prorated_number_rental_is_its_own_line_beside_the_usage(
        service: ServiceProcess, infra: Infra) -> None:
    account = uuid.uuid4()
    nc = await nats.connect(infra.nats_url)
    try:
        await publish_account(nc, account, at=JUL)
        await publish_usage(nc, account, product="sms", quantity=200, unit_price="0.0395", at=JUL)
        fee = EntryPosted(entry_id=str(uuid.uuid4()), account_id=account, kind="fee",
                          amount="-0.967742", currency="GBP", balance_after="-8.867742",
                          occurred_at=JUL, product="vmn", quantity=1, unit_price="2.00",
                          reference="+447700900123")
        await nc.jetstream().publish(LEDGER_ENTRY_POSTED, msgspec.json.encode(fee),
                                     headers={"Nats-Msg-Id": fee.entry_id})
    finally:
        await nc.close()
    await eventually(lambda: query(infra.database_url, "SELECT count(*) FROM invoicing.usage_lines"
                                   " WHERE account_id = %s", (account,))[0][0] == 2,
                     what="usage and fee lines")
    async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
        await run_billing(client, "2025-07")
        [summary] = (await client.get("/v1/invoices", params={"account_id": str(account)},
                                      headers=operator())).json()["items"]
        invoice = (await client.get(f"/v1/invoices/{summary['invoice_id']}",
                                    headers=operator())).json()
    lines = {line["product"]: line for line in invoice["lines"]}
    assert lines["vmn"]["description"] == "vmn +447700900123: 1 x 2.00, prorated by days (2025-07)"
    assert lines["vmn"]["net_amount"] == "0.97"
    assert lines["sms"]["net_amount"] == "7.90"
    assert invoice["subtotal"] == "8.87"
