"""Issued invoices become documents: rendered once with their SHA-256 recorded, emailed once
with the PDF attached to the billing profile's address, and served as the same PDF."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
from pypdf import PdfReader

from tests.conftest import Infra
from tests.integration.invoicing_fixtures import eventually, publish_account, publish_usage, query
from tests.integration.service_process import ServiceProcess
from tests.integration.test_invoicing_mail import Recorder, SmtpFixture
from tests.integration.test_invoicing_service import operator, portal, run_billing

pytestmark = pytest.mark.integration
AUG = datetime(2025, 8, 12, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Recorder, int]]:
    fixture = SmtpFixture()
    recorder = Recorder()
    server = fixture.start(recorder)
    try:
        yield recorder, server.port
    finally:
        fixture.stop()


@pytest.fixture(scope="module")
def service(infra: Infra, mailbox: tuple[Recorder, int],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = infra.service_env(OUTBOX_POLL_INTERVAL_S="0.2", SMTP_HOST="127.0.0.1",
                            SMTP_PORT=str(mailbox[1]), SMTP_SECURITY="none",
                            MAIL_FROM="invoices@billing.test")
    process = ServiceProcess("invoicing_service", env).start(
        Path(tmp_path_factory.mktemp("invoicing-documents")))
    process.wait_ready()
    try:
        yield process
    finally:
        process.stop()


async def test_an_issued_invoice_is_rendered_hashed_emailed_once_and_served(
        service: ServiceProcess, infra: Infra, mailbox: tuple[Recorder, int]) -> None:
    recorder, _ = mailbox
    account = uuid.uuid4()
    nc = await nats.connect(infra.nats_url)
    try:
        await publish_account(nc, account, at=AUG)
        await publish_usage(nc, account, product="sms", quantity=1000, unit_price="0.0395", at=AUG)
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
        profile = await client.put(
            f"/v1/accounts/{account}/billing-profile", headers=operator(),
            json={"legal_name": "Acme Messaging Ltd", "address_lines": ["2 High St", "Leeds"],
                  "billing_email": "accounts@acme.test", "po_number": "PO-778"})
        assert profile.status_code == 200, profile.text
        await eventually(lambda: query(infra.database_url,
                                       "SELECT count(*) FROM invoicing.usage_lines"
                                       " WHERE account_id = %s", (account,))[0][0] == 1,
                         what="the usage line")
        await run_billing(client, "2025-08")
        page = (await client.get("/v1/invoices", params={"account_id": str(account)},
                                 headers=operator())).json()
        [summary] = page["items"]
        invoice_id, number = summary["invoice_id"], summary["number"]

        await eventually(lambda: bool(query(infra.database_url,
                                            "SELECT 1 FROM invoicing.issued_documents"
                                            " WHERE document_id = %s", (invoice_id,))),
                         what="the document rendered")
        [(recorded, emailed_to)] = query(infra.database_url,
                                         "SELECT sha256, emailed_to FROM invoicing.issued_documents"
                                         " WHERE document_id = %s", (invoice_id,))
        assert emailed_to == ["accounts@acme.test"]

        pdf = await client.get(f"/v1/invoices/{invoice_id}/pdf", headers=portal(account))
        assert pdf.status_code == 200
        assert pdf.headers["content-type"] == "application/pdf"
        assert hashlib.sha256(pdf.content).hexdigest() == recorded
        assert pdf.headers["x-document-sha256"] == recorded == \
            pdf.headers["x-document-sha256-issued"]
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
        for expected in (number, "Acme Messaging Ltd", "PO-778", "GB000000000", "Leeds"):
            assert expected in text, expected
        other = await client.get(f"/v1/invoices/{invoice_id}/pdf", headers=portal(uuid.uuid4()))
        assert other.status_code == 404

    def delivered() -> bool:
        return any(number in str(m["Subject"]) for m in recorder.messages)

    await eventually(delivered, what="the invoice email")
    [message] = [m for m in recorder.messages if number in str(m["Subject"])]
    assert str(message["To"]) == "accounts@acme.test"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == f"{number}.pdf"
    assert hashlib.sha256(attachment.get_content()).hexdigest() == recorded

    # An operator re-sends: a sent email is never sent twice by accident, only on purpose.
    from typer.testing import CliRunner

    from invoicing_service.cli import app as invoicingctl

    runner = CliRunner()
    env = {"DATABASE_URL": infra.database_url}
    # (the CLI runs its own event loop: a thread of its own here)
    refused = await asyncio.to_thread(runner.invoke, invoicingctl, ["resend-email", number],
                                      env=env)
    assert refused.exit_code == 1 and "--again" in refused.output, refused.output
    again = await asyncio.to_thread(runner.invoke, invoicingctl,
                                    ["resend-email", number, "--again"], env=env)
    assert again.exit_code == 0, again.output

    def copies() -> int:
        return sum(number in str(m["Subject"]) for m in recorder.messages)

    await eventually(lambda: copies() == 2, what="the second copy")
