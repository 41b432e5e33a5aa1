"""The ledger's charge route, as the renewals see it: POST /v1/accounts/{id}/charges.

The ledger prices and records every charge (catalogue or the account's override), so the
balance, the statement and the invoices agree. Its charge key makes a retry harmless: a
charge repeated after a timeout, a crash or a second scheduler answers with the first.
Transport errors and 5xx are retried with back-off (services/backoff.py) a few times, then
reported as `Unavailable` and the renewal stays pending for a later run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import httpx
import msgspec
import structlog

from contracts.http.ledger import (
    CHARGES_PER_BATCH_MAX,
    AccountFee,
    Adjustment,
    ChargeFee,
    ChargeFees,
    FeeOutcome,
    FeeOutcomes,
    FeeProration,
    FeeView,
    PostedView,
)
from services.backoff import Backoff
from services.http import mint_token

log = structlog.get_logger(__name__)

TOKEN_TTL_S: Final = 3600
TOKEN_RENEW_BEFORE_S: Final = 600
ERROR_TEXT_MAX: Final = 500


@dataclass(frozen=True, slots=True)
class Charged:
    fee: FeeView


@dataclass(frozen=True, slots=True)
class Refused:
    """Insufficient funds (prepay, trial): nothing was written; retry after a top-up."""

    detail: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The ledger will never take this charge as sent: unknown account or product, closed
    account, malformed charge."""

    status: int
    detail: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    detail: str


ChargeOutcome = Charged | Refused | Rejected | Unavailable


@dataclass(frozen=True, slots=True)
class Credited:
    entry: PostedView


CreditOutcome = Credited | Rejected | Unavailable


@dataclass(frozen=True, slots=True)
class FeeRequest:
    account_id: UUID
    charge_key: str
    product: str
    quantity: int
    reference: str
    period: str | None
    days: int | None
    days_in_period: int | None
    description: str | None = None


class LedgerCharges:
    def __init__(self, base_url: str, jwt_secret: str, *, timeout_s: float,
                 attempts_max: int, retry_initial_s: float, retry_max_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                         transport=transport)
        self._secret = jwt_secret
        self._attempts_max = attempts_max
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._token = ""
        self._token_until = 0.0

    async def aclose(self) -> None:
        await self._client.aclose()

    def _bearer(self) -> str:
        now = time.monotonic()
        if now >= self._token_until:
            self._token = mint_token(self._secret, sub="invoicing_service:recurring",
                                     scopes=["operator"], ttl_s=TOKEN_TTL_S)
            self._token_until = now + TOKEN_TTL_S - TOKEN_RENEW_BEFORE_S
        return f"Bearer {self._token}"

    async def charge_many(self, fees: Sequence[FeeRequest]) -> list[ChargeOutcome]:
        """Many fees in one call of the ledger (POST /v1/charges, one transaction there), one
        outcome per fee in order; at most CHARGES_PER_BATCH_MAX."""
        assert 0 < len(fees) <= CHARGES_PER_BATCH_MAX
        body = msgspec.json.encode(ChargeFees(charges=[
            AccountFee(account_id=fee.account_id, **_fee_fields(fee)) for fee in fees]))
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        detail = ""
        for attempt in range(1, self._attempts_max + 1):
            try:
                response = await self._client.post(
                    "/v1/charges", content=body,
                    headers={"Authorization": self._bearer(),
                             "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
            else:
                if response.status_code == 200:
                    results = msgspec.json.decode(response.content, type=FeeOutcomes).results
                    if len(results) != len(fees):
                        raise RuntimeError("the ledger answered another number of outcomes")
                    return [_batch_outcome(result) for result in results]
                single = _outcome(response)
                if single is not None:  # the whole batch refused: malformed, say
                    return [single] * len(fees)
                detail = f"ledger answered {response.status_code}"
            if attempt < self._attempts_max:
                log.info("recurring.ledger_retry", attempt=attempt, detail=detail,
                         charges=len(fees))
                await asyncio.sleep(backoff.next_wait_s())
        return [Unavailable(detail)] * len(fees)

    async def charge(self, fee: FeeRequest) -> ChargeOutcome:
        body = msgspec.json.encode(ChargeFee(**_fee_fields(fee)))
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        detail = ""
        for attempt in range(1, self._attempts_max + 1):
            try:
                response = await self._client.post(
                    f"/v1/accounts/{fee.account_id}/charges", content=body,
                    headers={"Authorization": self._bearer(),
                             "Idempotency-Key": fee.charge_key,
                             "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
            else:
                outcome = _outcome(response)
                if outcome is not None:
                    return outcome
                detail = f"ledger answered {response.status_code}"
            if attempt < self._attempts_max:
                log.info("recurring.ledger_retry", attempt=attempt, detail=detail,
                         charge_key=fee.charge_key)
                await asyncio.sleep(backoff.next_wait_s())
        return Unavailable(detail)


    async def credit(self, account_id: UUID, key: str, amount: str, memo: str
                     ) -> CreditOutcome:
        """Credit the account (POST /v1/accounts/{id}/adjustments, direction credit) once per
        key: the ledger answers a repeat of the key and body with the first entry. The
        statement shows it as an adjustment whose memo names the item's reference."""
        body = msgspec.json.encode(Adjustment(direction="credit", amount=amount, memo=memo))
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        detail = ""
        for attempt in range(1, self._attempts_max + 1):
            try:
                response = await self._client.post(
                    f"/v1/accounts/{account_id}/adjustments", content=body,
                    headers={"Authorization": self._bearer(), "Idempotency-Key": key,
                             "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
            else:
                status = response.status_code
                if status in (200, 201):
                    return Credited(msgspec.json.decode(response.content, type=PostedView))
                if status < 500 and status not in (401, 403, 429):
                    return Rejected(status, response.text[:ERROR_TEXT_MAX])
                detail = f"ledger answered {status}"
            if attempt < self._attempts_max:
                log.info("recurring.ledger_retry", attempt=attempt, detail=detail, key=key)
                await asyncio.sleep(backoff.next_wait_s())
        return Unavailable(detail)


def _fee_fields(fee: FeeRequest) -> dict[str, Any]:
    return {
        "charge_key": fee.charge_key, "product": fee.product, "quantity": fee.quantity,
        "reference": fee.reference, "period": fee.period,
        "proration": FeeProration(days=fee.days, days_in_period=fee.days_in_period)
        if fee.days is not None and fee.days_in_period is not None else None,
        "description": fee.description,
    }


def _batch_outcome(result: FeeOutcome) -> ChargeOutcome:
    if result.outcome == "charged" and result.fee is not None:
        return Charged(result.fee)
    if result.outcome == "refused":
        return Refused(result.detail or "insufficient funds")
    return Rejected(result.status or 422, result.detail or result.problem_type or "rejected")


def _outcome(response: httpx.Response) -> ChargeOutcome | None:
    """What a ledger answer means; None: worth another try (5xx, 429, and 401/403: a token
    or secret being rotated is an operator's fix, not the charge's fault)."""
    status = response.status_code
    if status in (200, 201):
        return Charged(msgspec.json.decode(response.content, type=FeeView))
    if status >= 500 or status in (401, 403, 429):
        return None
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    detail = str(problem.get("detail") or problem.get("title") or status)[:ERROR_TEXT_MAX]
    if status == 422 and str(problem.get("type", "")).endswith("insufficient-funds"):
        return Refused(detail)
    return Rejected(status, detail)
