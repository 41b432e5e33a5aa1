"""The invoicing service as its own process on real PostgreSQL and NATS.

Usage and accounts arrive as the ledger publishes them (ledger.v1.events.entry_posted and
account_updated); payments as payments publishes them. A month's billing run issues one
invoice per postpay account and currency with the right VAT (UK 20%, reverse charge for a
German business), a payment marks an invoice paid once, late usage becomes a correction line
on the next invoice, and a run killed half-way (SIGKILL) finishes after a restart with no
account invoiced twice and none skipped, and invoice numbers without a gap.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import nats
import pytest

from contracts.payments import PaymentReceived
from invoicing_service.domain.numbering import sequence_of
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.invoicing_fixtures import (
    eventually,
    publish_account,
    publish_payment,
    publish_usage,
    query,
)
from tests.integration.service_process import ServiceProcess
from tests.integration.streams import stream_messages

pytestmark = pytest.mark.integration

OPERATOR = mint_token(DEVELOPMENT_JWT_SECRET, sub="ops@example.test", scopes=["operator"])
OCT = datetime(2025, 10, 15, 12, 0, tzinfo=UTC)
NOV = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)


def portal(account_id: uuid.UUID) -> dict[str, str]:
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub=f"portal-{account_id}", scopes=["portal"],
                       tenant_id=str(account_id))
    return {"Authorization": f"Bearer {token}"}


def operator(key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    if key:
        headers["Idempotency-Key"] = key
    return headers


def start_service(infra: Infra, log_dir: Path, port: int | None = None,
                  **extra: str) -> ServiceProcess:
    env = infra.service_env(OUTBOX_POLL_INTERVAL_S="0.2", OVERDUE_SWEEP_INTERVAL_S="1", **extra)
    process = ServiceProcess("invoicing_service", env) if port is None \
        else ServiceProcess("invoicing_service", env, port=port)
    process.start(log_dir).wait_ready()
    return process


@pytest.fixture(scope="module")
def service(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_service(infra, tmp_path_factory.mktemp("invoicing"))
    try:
        yield process
    finally:
        process.stop()


async def run_billing(client: httpx.AsyncClient, period: str) -> dict[str, object]:
    answer = await client.post("/v1/billing-runs", json={"period": period},
                               headers=operator(f"run-{period}"))
    assert answer.status_code in (200, 202), answer.text
    run_id = answer.json()["billing_run_id"]
    final: dict[str, object] = {}

    async def completed() -> bool:
        nonlocal final
        final = (await client.get(f"/v1/billing-runs/{run_id}", headers=operator())).json()
        return final["status"] == "completed"

    await eventually(completed, what=f"billing run {period}")
    return final


async def test_a_months_billing_invoices_gb_and_german_business_customers(
    service: ServiceProcess, infra: Infra,
) -> None:
    gb, de, prepay = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    nc = await nats.connect(infra.nats_url)
    try:
        await publish_account(nc, gb, at=OCT)
        await publish_account(nc, de, currency="EUR", country="DE", vat_number="DE136695976",
                              at=OCT)
        await publish_account(nc, prepay, account_type="prepay", at=OCT)
        for _ in range(3):
            await publish_usage(nc, gb, product="sms", quantity=100, unit_price="0.0395", at=OCT)
        await publish_usage(nc, gb, product="sms", quantity=1, unit_price="0.0333", at=OCT)
        await publish_usage(nc, de, product="rcs_basic", quantity=250, unit_price="0.052",
                            at=OCT, currency="EUR")
        await publish_usage(nc, prepay, product="sms", quantity=10, unit_price="0.0395", at=OCT)
        await publish_usage(nc, gb, product="sms", quantity=7, unit_price="0.0395", at=NOV)
        await eventually(lambda: query(infra.database_url,
                                       "SELECT count(*) FROM invoicing.usage_lines"
                                       " WHERE account_id = ANY(%s)", ([gb, de, prepay],))[0][0] == 7,
                         what="usage lines")

        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            refused = await client.post("/v1/billing-runs", json={"period": "2099-01"},
                                        headers=operator())
            assert refused.status_code == 422
            assert refused.headers["content-type"].startswith("application/problem+json")

            run = await run_billing(client, "2025-10")
            assert run["invoices_issued"] >= 2  # the session's other tests may add theirs
            again = await client.post("/v1/billing-runs", json={"period": "2025-10"},
                                      headers=operator())
            assert again.status_code == 200 and again.json()["billing_run_id"] == run["billing_run_id"]
            reused = await client.post("/v1/billing-runs", json={"period": "2025-09"},
                                       headers=operator("run-2025-10"))
            assert reused.status_code == 409

            gb_page = (await client.get("/v1/invoices", params={"account_id": str(gb)},
                                        headers=operator())).json()
            assert len(gb_page["items"]) == 1
            gb_invoice = (await client.get(f"/v1/invoices/{gb_page['items'][0]['invoice_id']}",
                                           headers=operator())).json()
            # 300 x 0.0395 = 11.85 and 1 x 0.0333 = 0.0333 -> 0.03; VAT 20% of 11.88 = 2.376 -> 2.38
            assert [(line["quantity"], line["net_amount"]) for line in gb_invoice["lines"]] == \
                [(1, "0.03"), (300, "11.85")]
            assert gb_invoice["vat_breakdown"] == [{"vat_rate": "20", "vat_treatment": "standard",
                                                    "net_amount": "11.88", "vat_amount": "2.38"}]
            assert (gb_invoice["subtotal"], gb_invoice["vat_total"], gb_invoice["total"]) == \
                ("11.88", "2.38", "14.26")
            assert gb_invoice["status"] == "open"
            assert gb_invoice["number"].startswith(f"INV-{datetime.now(UTC).year}-")

            de_page = (await client.get("/v1/invoices", params={"account_id": str(de)},
                                        headers=operator())).json()
            de_invoice = (await client.get(f"/v1/invoices/{de_page['items'][0]['invoice_id']}",
                                           headers=operator())).json()
            assert de_invoice["currency"] == "EUR"
            assert de_invoice["vat_breakdown"] == [{"vat_rate": "0",
                                                    "vat_treatment": "reverse_charge",
                                                    "net_amount": "13.00", "vat_amount": "0.00"}]
            assert de_invoice["total"] == "13.00"
            prepay_page = (await client.get("/v1/invoices", params={"account_id": str(prepay)},
                                            headers=operator())).json()
            assert prepay_page["items"] == []

            # the portal sees its own invoices only
            mine = (await client.get("/v1/invoices", headers=portal(gb))).json()
            assert [i["invoice_id"] for i in mine["items"]] == [gb_invoice["invoice_id"]]
            assert mine["totals"] == [{"status": "open", "currency": "GBP", "count": 1,
                                       "total": "14.26", "amount_due": "14.26"}]
            other = await client.get(f"/v1/invoices/{de_invoice['invoice_id']}", headers=portal(gb))
            assert other.status_code == 404
            assert (await client.get("/v1/invoices", params={"account_id": str(de)},
                                     headers=portal(gb))).status_code == 404

            # a partial payment leaves it open; the rest pays it; a duplicate changes nothing
            for payment_id, net, vat in [("pay-1", "5.00", "1.00"), ("pay-2", "6.88", "1.38"),
                                         ("pay-2", "6.88", "1.38")]:
                await publish_payment(nc, PaymentReceived(
                    payment_id=payment_id, provider="stripe", provider_reference=f"pi_{payment_id}",
                    account_id=gb, purpose="invoice", amount=net, vat_amount=vat, currency="GBP",
                    invoice_id=gb_invoice["invoice_id"], received_at=NOV))

            async def paid() -> bool:
                view = (await client.get(f"/v1/invoices/{gb_invoice['invoice_id']}",
                                         headers=operator())).json()
                return view["status"] == "paid" and view["amount_due"] == "0.00"

            await eventually(paid, what="the invoice paid")
            refused = await client.post(f"/v1/invoices/{gb_invoice['invoice_id']}/void",
                                        json={"reason": "mistake"}, headers=operator("v1"))
            assert refused.status_code == 409
            assert refused.json()["type"].endswith("invoice-not-voidable")

            # credit notes: never more than is left; own series; replay returns the same
            too_much = await client.post(f"/v1/invoices/{de_invoice['invoice_id']}/credit-notes",
                                         json={"amount": "13.01", "reason": "goodwill"},
                                         headers=operator("cn-0"))
            assert too_much.status_code == 422
            note = await client.post(f"/v1/invoices/{de_invoice['invoice_id']}/credit-notes",
                                     json={"amount": "3.00", "reason": "goodwill"},
                                     headers=operator("cn-1"))
            assert note.status_code == 201, note.text
            replay = await client.post(f"/v1/invoices/{de_invoice['invoice_id']}/credit-notes",
                                       json={"amount": "3.00", "reason": "goodwill"},
                                       headers=operator("cn-1"))
            assert replay.json() == note.json()
            assert note.json()["number"].startswith(f"CN-{datetime.now(UTC).year}-")
            view = (await client.get(f"/v1/invoices/{de_invoice['invoice_id']}",
                                     headers=operator())).json()
            assert view["amount_due"] == "10.00"
            voided = await client.post(f"/v1/invoices/{de_invoice['invoice_id']}/void",
                                       json={"reason": "billed in error"}, headers=operator("v2"))
            assert voided.status_code == 200 and voided.json()["status"] == "void"
            assert voided.json()["amount_due"] == "0.00"

            # late October usage goes on November's invoice as a correction line
            await publish_usage(nc, gb, product="sms", quantity=5, unit_price="0.0395", at=OCT)
            await eventually(lambda: query(infra.database_url,
                                           "SELECT count(*) FROM invoicing.usage_lines"
                                           " WHERE account_id = %s", (gb,))[0][0] == 6,
                             what="the late line")
            await run_billing(client, "2025-11")
            nov_page = (await client.get("/v1/invoices", params={"account_id": str(gb),
                                                                 "status": "open"},
                                         headers=operator())).json()
            nov = (await client.get(f"/v1/invoices/{nov_page['items'][0]['invoice_id']}",
                                    headers=operator())).json()
            assert nov["period"] == "2025-11"
            descriptions = [line["description"] for line in nov["lines"]]
            assert descriptions[0].startswith("sms: 7 x 0.0395")
            assert descriptions[1].startswith("Correction: usage of 2025-10")
            assert nov["subtotal"] == "0.48"  # 0.2765 -> 0.28 and 0.1975 -> 0.20

            # a top-up yields a paid receipt with the VAT paid
            await publish_payment(nc, PaymentReceived(
                payment_id="topup-1", provider="stripe", provider_reference="pi_topup",
                account_id=prepay, purpose="topup", amount="100.00", vat_amount="20.00",
                currency="GBP", received_at=NOV))

            async def receipt() -> bool:
                page = (await client.get("/v1/invoices", params={"account_id": str(prepay)},
                                         headers=operator())).json()
                return bool(page["items"]) and page["items"][0]["status"] == "paid"

            await eventually(receipt, what="the top-up receipt")

        async def published() -> bool:
            found = [m for m in await stream_messages(nc, "INVOICING")
                     if m[1].get("account_id") in (str(gb), str(de), str(prepay))]
            kinds = sorted(subject.rsplit(".", 1)[-1] for subject, _, _ in found)
            return kinds == ["credit_note_issued", "issued", "issued", "issued", "issued",
                             "paid", "paid", "voided"]

        await eventually(published, what="invoicing events on the INVOICING stream")
        messages = await stream_messages(nc, "INVOICING")
        assert all(headers.get("Nats-Msg-Id") == payload["event_id"]
                   for _, payload, headers in messages)
    finally:
        await nc.close()


async def test_a_run_killed_half_way_finishes_after_a_restart_without_doubles_or_gaps(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    accounts = [uuid.uuid4() for _ in range(400)]
    june = datetime(2025, 6, 10, tzinfo=UTC)
    nc = await nats.connect(infra.nats_url)
    log_dir = tmp_path_factory.mktemp("invoicing-crash")
    process = start_service(infra, log_dir, BILLING_RUN_PAGE_SIZE="5")
    try:
        for account in accounts:
            await publish_account(nc, account, at=june)
            await publish_usage(nc, account, product="sms", quantity=3, unit_price="0.0395",
                                at=june)
        await eventually(lambda: query(infra.database_url,
                                       "SELECT count(*) FROM invoicing.usage_lines"
                                       " WHERE account_id = ANY(%s)", (accounts,))[0][0] == 400,
                         what="usage lines", timeout_s=60)
        answer = httpx.post(f"{process.url}/v1/billing-runs", json={"period": "2025-06"},
                            headers=operator(), timeout=10)
        assert answer.status_code == 202
        run_id = answer.json()["billing_run_id"]

        def issued() -> int:
            return int(query(infra.database_url, "SELECT count(*) FROM invoicing.invoices"
                             " WHERE billing_run_id = %s AND account_id = ANY(%s)",
                             (run_id, accounts))[0][0])

        await eventually(lambda: issued() >= 40, what="part of the run", timeout_s=60)
        assert process.process is not None
        process.process.send_signal(signal.SIGKILL)
        process.process.wait()
        assert issued() < 400, "the run finished before it could be killed"

        process = start_service(infra, log_dir, BILLING_RUN_PAGE_SIZE="50")  # resumes the run
        await eventually(lambda: query(infra.database_url, "SELECT status FROM"
                                       " invoicing.billing_runs WHERE billing_run_id = %s",
                                       (run_id,))[0][0] == "completed",
                         what="the resumed run", timeout_s=120)
        per_account = query(infra.database_url,
                            "SELECT account_id, count(*) FROM invoicing.invoices"
                            " WHERE billing_run_id = %s AND account_id = ANY(%s)"
                            " GROUP BY account_id", (run_id, accounts))
        assert len(per_account) == 400 and all(count == 1 for _, count in per_account)
        assert {row[0] for row in per_account} == set(accounts)
        # Every line billed once, by its own account's invoice of this run.
        assert query(infra.database_url,
                     "SELECT count(*) FILTER (WHERE i.billing_run_id IS DISTINCT FROM %s"
                     " OR i.account_id <> b.account_id), count(*)"
                     " FROM invoicing.usage_lines_billing b LEFT JOIN invoicing.invoices i"
                     " ON i.invoice_id = b.billed_by WHERE b.account_id = ANY(%s)",
                     (run_id, accounts)) == [(0, 400)]
        totals = {row[0] for row in query(infra.database_url,
                                          "SELECT total_micros FROM invoicing.invoices"
                                          " WHERE billing_run_id = %s AND account_id = ANY(%s)",
                                          (run_id, accounts))}
        assert totals == {int(Decimal("0.14") * 1_000_000)}  # 0.1185 -> 0.12 + VAT 0.02
        numbers = [row[0] for row in query(infra.database_url,
                                           "SELECT number FROM invoicing.invoices"
                                           " WHERE number LIKE 'INV-%%'")]
        sequences = sorted(sequence_of(n)[1] for n in numbers)
        assert sequences == list(range(1, len(sequences) + 1))
    finally:
        await nc.close()
        if process.process is not None and process.process.poll() is None:
            process.stop()


async def test_net_terms_come_from_the_billing_profile_and_overdue_is_published_once(
    service: ServiceProcess, infra: Infra,
) -> None:
    customer = uuid.uuid4()
    sept = datetime(2025, 9, 20, tzinfo=UTC)
    nc = await nats.connect(infra.nats_url)
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            profile = {"legal_name": "Due Now Ltd", "address_lines": ["1 High Street", "Leeds"],
                       "billing_email": "accounts@due-now.example", "po_number": "PO-77",
                       "net_terms_days": 0}
            put = await client.put(f"/v1/accounts/{customer}/billing-profile", json=profile,
                                   headers=operator())
            assert put.status_code == 200, put.text
            mine = await client.get(f"/v1/accounts/{customer}/billing-profile",
                                    headers=portal(customer))
            assert mine.json()["po_number"] == "PO-77" and mine.json()["net_terms_days"] == 0
            assert (await client.get(f"/v1/accounts/{customer}/billing-profile",
                                     headers=portal(uuid.uuid4()))).status_code == 404
            assert (await client.put(f"/v1/accounts/{customer}/billing-profile", json=profile,
                                     headers=portal(customer))).status_code == 403

            await publish_account(nc, customer, at=sept)
            await publish_usage(nc, customer, product="sms", quantity=1000, unit_price="0.0395",
                                at=sept)
            await eventually(lambda: query(infra.database_url,
                                           "SELECT count(*) FROM invoicing.usage_lines"
                                           " WHERE account_id = %s", (customer,))[0][0] == 1,
                             what="the usage line")
            await run_billing(client, "2025-09")

            async def overdue() -> bool:
                page = (await client.get("/v1/invoices", params={"account_id": str(customer)},
                                         headers=operator())).json()
                return bool(page["items"]) and page["items"][0]["status"] == "overdue"

            await eventually(overdue, what="the invoice overdue")
            page = (await client.get("/v1/invoices", params={"status": "overdue"},
                                     headers=portal(customer))).json()
            assert page["totals"] == [{"status": "overdue", "currency": "GBP", "count": 1,
                                       "total": "47.40", "amount_due": "47.40"}]
        await asyncio.sleep(2.5)  # more sweeps: still one overdue message

        overdue_messages = [m for m in await stream_messages(nc, "INVOICING")
                            if m[0] == "invoicing.v1.overdue"
                            and m[1]["account_id"] == str(customer)]
        assert len(overdue_messages) == 1
        assert overdue_messages[0][1]["amount_due"] == "47.40"
    finally:
        await nc.close()


async def test_malformed_and_refused_messages_go_to_dead_letters_and_the_rest_applies(
    service: ServiceProcess, infra: Infra,
) -> None:
    account = uuid.uuid4()
    nc = await nats.connect(infra.nats_url)
    try:
        js = nc.jetstream()
        # account_updated: no other consumer reads it, so the bad message disturbs nobody else
        await js.publish("ledger.v1.events.account_updated",
                         b'{"event_id": "not-a-whole-message", "account_id": "%s"}'
                         % str(account).encode(), headers={"Nats-Msg-Id": f"bad-{account}"})
        await publish_payment(nc, PaymentReceived(
            payment_id=f"pay-unknown-{account}", provider="stripe", provider_reference="pi_x",
            account_id=account, purpose="invoice", amount="1.00", vat_amount="0.20",
            currency="GBP", invoice_id=str(uuid.uuid4()), received_at=NOV))
        await publish_account(nc, account, version=3, country="FR", at=OCT)
        await publish_account(nc, account, version=2, at=OCT)  # older: ignored
        await publish_usage(nc, account, product="sms", quantity=1, unit_price="0.0395", at=NOV)
        await eventually(lambda: query(infra.database_url,
                                       "SELECT count(*) FROM invoicing.usage_lines"
                                       " WHERE account_id = %s", (account,))[0][0] == 1,
                         what="the valid message after the malformed one")
        assert query(infra.database_url, "SELECT version, country FROM invoicing.accounts"
                     " WHERE account_id = %s", (account,)) == [(3, "FR")]

        async def buried() -> bool:
            letters = [payload for subject, payload, _ in await stream_messages(nc, "DEADLETTER")
                       if payload.get("consumer", "").startswith("invoicing-")]
            reasons = {(letter["subject"], letter["reason"]) for letter in letters
                       if str(account) in letter["payload"]}
            return reasons == {("ledger.v1.events.account_updated", "invalid_payload"),
                               ("payments.v1.received", "rejected")}

        await eventually(buried, what="two dead letters")
    finally:
        await nc.close()
