"""recurringctl: the operator's tool for recurring items, over the invoicing service's API.

    python -m invoicing_service.recurring.cli add ACCOUNT vmn +447700900123 --starts-on 2026-12-04
    python -m invoicing_service.recurring.cli list ACCOUNT
    python -m invoicing_service.recurring.cli cancel ITEM --at period_end
    python -m invoicing_service.recurring.cli change-plan ITEM --quantity 3
    python -m invoicing_service.recurring.cli change ITEM --product vmn --quantity 2 --effective now
    python -m invoicing_service.recurring.cli run [--as-of 2027-01-01]

INVOICING_URL (default http://127.0.0.1:8003) and JWT_SECRET (the services' secret: the tool
mints a short operator token with it). Exit codes: 0 ok, 1 refused by the service (its
problem is printed), 2 a usage or connection error.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import date
from typing import Annotated, Any

import httpx
import msgspec
import typer
from rich.console import Console
from rich.table import Table

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from services.settings import SettingsError, ToolSettings, load_tool_settings

TOKEN_TTL_S = 300
app = typer.Typer(help="Recurring items (numbers, keywords): add, list, cancel, change, run.",
                  no_args_is_help=True)
console = Console()


class RecurringToolSettings(ToolSettings, frozen=True, kw_only=True):
    invoicing_url: str = "http://127.0.0.1:8003"
    jwt_secret: str = DEVELOPMENT_JWT_SECRET


def _client() -> httpx.Client:
    try:
        settings = load_tool_settings("invoicing_service", cls=RecurringToolSettings)
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    token = mint_token(settings.jwt_secret, sub="recurringctl", scopes=["operator"],
                       ttl_s=TOKEN_TTL_S)
    return httpx.Client(base_url=settings.invoicing_url.rstrip("/"), timeout=60,
                        headers={"Authorization": f"Bearer {token}"})


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client() as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the invoicing service: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}[/red] {response.text}")
        raise typer.Exit(1)
    return response.json()


def _print_items(items: list[dict[str, Any]]) -> None:
    table = Table("item", "product", "qty", "reference", "starts", "ends", "status", "charges")
    for item in items:
        charges = ", ".join(f"{c['period']}:{c['status']}" for c in item["charges"])
        table.add_row(item["item_id"], item["product"], str(item["quantity"]),
                      item["reference"], item["starts_on"], item.get("ends_on") or "",
                      item["status"], charges)
    console.print(table)


@app.command()
def add(account: uuid.UUID, product: str, reference: str,
        starts_on: Annotated[str, typer.Option(help="YYYY-MM-DD; default today")] = "",
        ends_on: Annotated[str, typer.Option(help="YYYY-MM-DD, last day of service")] = "",
        quantity: int = 1,
        key: Annotated[str, typer.Option(help="Idempotency-Key; default derived from the"
                                              " account, product and reference")] = "") -> None:
    """Give an account a number or keyword (charged from its start)."""
    body = {"product": product, "quantity": quantity, "reference": reference,
            "starts_on": starts_on or date.today().isoformat()}
    if ends_on:
        body["ends_on"] = ends_on
    item = _call("POST", f"/v1/accounts/{account}/recurring-items", json=body,
                 headers={"Idempotency-Key": key or f"cli:{account}:{product}:{reference}"[:128]})
    _print_items([item])


@app.command("list")
def list_items(account: uuid.UUID,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """An account's items and their charges."""
    page = _call("GET", f"/v1/accounts/{account}/recurring-items")
    if as_json:
        sys.stdout.write(json.dumps(page, indent=2) + "\n")
    else:
        _print_items(page["items"])


@app.command()
def cancel(item: uuid.UUID, at: Annotated[str, typer.Option(
        help="now or period_end")] = "period_end") -> None:
    """Cancel now or at the end of the month."""
    _print_items([_call("POST", f"/v1/recurring-items/{item}/cancel", json={"at": at})])


@app.command("change-plan")
def change_plan(item: uuid.UUID, product: str = "", quantity: int = 0) -> None:
    """A new product or quantity from next month."""
    body: dict[str, Any] = {}
    if product:
        body["product"] = product
    if quantity:
        body["quantity"] = quantity
    _print_items([_call("POST", f"/v1/recurring-items/{item}/plan-change", json=body)])


@app.command()
def change(item: uuid.UUID, product: str = "", quantity: int = 0,
           effective: Annotated[str, typer.Option(
               help="now (prorated credit and charge) or next_period; default: the"
                    " product's setting")] = "",
           key: Annotated[str, typer.Option(help="Idempotency-Key; default derived from the item,"
                                                  " the change and the day")] = ""
           ) -> None:
    """Change product or quantity, at once with proration or from next month."""
    body: dict[str, Any] = {}
    if product:
        body["product"] = product
    if quantity:
        body["quantity"] = quantity
    if effective:
        body["effective"] = effective
    _print_items([_call("POST", f"/v1/recurring-items/{item}/change", json=body,
                        headers={"Idempotency-Key": key or f"cli:change:{item}:{product}:{quantity}:"
                                                     f"{effective}:{date.today()}"[:128]})])


@app.command()
def run(as_of: Annotated[str, typer.Option(
        help="YYYY-MM-DD (needs RECURRING_MANUAL_CLOCK on the service)")] = "") -> None:
    """Run the renewals now."""
    result = _call("POST", "/v1/recurring-runs", json={"as_of": as_of} if as_of else {})
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    app()
