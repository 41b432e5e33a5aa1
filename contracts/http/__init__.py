"""Bodies of the HTTP APIs, one module per service, plus RFC 9457 problems.

`BODIES` lists every request and response body; the schema export walks it.
"""

from __future__ import annotations

from typing import Final

from msgspec import Struct

from contracts.http import invoicing, ledger, payments, problem, sync

BODIES: Final[tuple[type[Struct], ...]] = (
    # ledger_service
    ledger.OpenAccount,
    ledger.PatchAccount,
    ledger.AccountView,
    ledger.BalanceView,
    ledger.EntriesPage,
    ledger.UsageView,
    ledger.GrantCredit,
    ledger.GrantView,
    ledger.Adjustment,
    ledger.RefundRequest,
    ledger.PostedView,
    ledger.ChargeFee,
    ledger.FeeView,
    ledger.ChargeFees,
    ledger.FeeOutcomes,
    ledger.PriceOverride,
    ledger.PriceOverrideView,
    ledger.AuditEventsPage,
    # payments_service
    payments.CreateTopUp,
    payments.CheckoutSessionView,
    payments.PaymentView,
    payments.PaymentsPage,
    # invoicing_service
    invoicing.InvoiceView,
    invoicing.InvoicesPage,
    invoicing.BillingRunRequest,
    invoicing.BillingRunView,
    invoicing.VoidRequest,
    invoicing.CreditNoteRequest,
    invoicing.CreditNoteView,
    invoicing.CreateRecurringItem,
    invoicing.CancelRecurringItem,
    invoicing.ChangeRecurringPlan,
    invoicing.ChangeRecurringItem,
    invoicing.RecurringItemView,
    invoicing.RecurringItemsPage,
    invoicing.RecurringRunRequest,
    invoicing.RecurringRunView,
    invoicing.AlertsPage,
    invoicing.NotificationSettings,
    invoicing.NotificationSettingsView,
    # sync_service
    sync.SyncStatus,
    sync.DeadLettersPage,
    sync.RetryAccepted,
    # every service
    problem.Problem,
)
