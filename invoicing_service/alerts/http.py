"""HTTP routes of alerts: the history of alerts sent, and notification settings
(portal: its own account; operator: any)."""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

from litestar import Router, get, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from contracts.http.invoicing import AlertsPage, NotificationSettings, NotificationSettingsView
from invoicing_service.alerts.app import Alerts
from invoicing_service.mail import InvalidEmail
from services.http import (
    BEARER_SECURITY,
    OPERATOR,
    PORTAL,
    CurrentPrincipal,
    Principal,
    problem_responses,
    requires_any_scope,
)

EXCEPTION_STATUSES: Final[dict[type[Exception], tuple[int, str]]] = {
    InvalidEmail: (422, "invalid-email"),
}
READERS: Final[dict[str, Any]] = {"guards": [requires_any_scope(PORTAL, OPERATOR)],
                                  "security": BEARER_SECURITY}


def check_may_read(principal: Principal, account_id: UUID) -> None:
    if not principal.may_read_account(account_id):
        raise NotFoundException(detail=f"account {account_id} not found")


@get("/v1/accounts/{account_id:uuid}/alerts", summary="Alerts sent to the account, newest first",
     **READERS, responses=problem_responses(401, 403, 404))
async def list_alerts(account_id: FromPath[UUID], alerts: NamedDependency[Alerts],
                      principal: CurrentPrincipal) -> AlertsPage:
    check_may_read(principal, account_id)
    return await alerts.history(account_id)


@get("/v1/accounts/{account_id:uuid}/notification-settings",
     summary="Which alerts are emailed, and to whom", **READERS,
     responses=problem_responses(401, 403, 404))
async def get_settings(account_id: FromPath[UUID], alerts: NamedDependency[Alerts],
                       principal: CurrentPrincipal) -> NotificationSettingsView:
    check_may_read(principal, account_id)
    return await alerts.settings(account_id)


@put("/v1/accounts/{account_id:uuid}/notification-settings",
     summary="Replace the notification settings", **READERS,
     responses=problem_responses(400, 401, 403, 404, 422))
async def put_settings(account_id: FromPath[UUID], data: JSONBody[NotificationSettings],
                       alerts: NamedDependency[Alerts],
                       principal: CurrentPrincipal) -> NotificationSettingsView:
    check_may_read(principal, account_id)
    return await alerts.save_settings(account_id, data)


def router(alerts: Alerts) -> Router:
    return Router(
        path="/",
        route_handlers=[list_alerts, get_settings, put_settings],
        dependencies={"alerts": Provide(lambda: alerts, sync_to_thread=False)},
        tags=["alerts"],
    )
