"""Helpers of the invoicing tests: publish ledger and payments messages as their services
would, read invoicing's tables, poll."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import nats
import psycopg

from contracts.ledger import AccountTax, AccountUpdated, EntryPosted
from contracts.payments import PaymentReceived
from contracts.subjects import LEDGER_ACCOUNT_UPDATED, LEDGER_ENTRY_POSTED, PAYMENTS_RECEIVED
from services.database import conninfo


async def publish_account(nc: nats.NATS, account_id: uuid.UUID, *, account_type: str = "postpay",
                          currency: str = "GBP", country: str = "GB",
                          vat_number: str | None = None, version: int = 1,
                          at: datetime) -> None:
    message = AccountUpdated(
        event_id=f"account_updated:{account_id}:{version}", account_id=account_id,
        version=version, account_type=account_type, currency=currency,  # type: ignore[arg-type]
        tier="starter", billing_basis="submitted", credit_limit="1000.00",
        tax=AccountTax(country=country, vat_number=vat_number,
                       reverse_charge=vat_number is not None),
        closed=False, name=f"Customer {str(account_id)[:8]}", occurred_at=at)
    await nc.jetstream().publish(LEDGER_ACCOUNT_UPDATED, msgspec.json.encode(message),
                                 headers={"Nats-Msg-Id": message.event_id})


async def publish_usage(nc: nats.NATS, account_id: uuid.UUID, *, product: str, quantity: int,
                        unit_price: str, at: datetime, currency: str = "GBP") -> str:
    entry_id = str(uuid.uuid4())
    amount = Decimal(unit_price) * quantity
    message = EntryPosted(entry_id=entry_id, account_id=account_id, kind="usage",
                          amount=f"-{amount:f}", currency=currency,  # type: ignore[arg-type]
                          balance_after="0.00", occurred_at=at, product=product,
                          quantity=quantity, unit_price=unit_price)
    await nc.jetstream().publish(LEDGER_ENTRY_POSTED, msgspec.json.encode(message),
                                 headers={"Nats-Msg-Id": entry_id})
    return entry_id


async def publish_payment(nc: nats.NATS, payment: PaymentReceived) -> None:
    await nc.jetstream().publish(PAYMENTS_RECEIVED, msgspec.json.encode(payment),
                                 headers={"Nats-Msg-Id": payment.payment_id})


def query(database_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
