"""`GET /v1/health/lag`: the signal operators alert on when a follower is stuck.

`/readyz` stays about "can this process serve" (a stuck projection does not stop balances,
which fall back to the account itself). This route answers 503 (problem+json) when a
follower (a projection or the publisher) has had events waiting for longer than
LEDGER_LAG_ALERT_S, and 200 otherwise; both bodies list every follower's lag."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from psycopg_pool import AsyncConnectionPool

from ledger_service.lag import read_lags_async
from services.http.problems import problem_response, problem_responses


def lag_router(pool: AsyncConnectionPool, alert_s: float) -> Router:
    @get("/lag", summary="Followers' lag: 503 when one has had events waiting too long",
         description="Each follower of the log (the projections balances, statement, usage,"
                     " holds and the publisher of ledger.v1.events): its position, the events"
                     " it has not applied and the age of the oldest of them. 503 when that age"
                     " passes LEDGER_LAG_ALERT_S while events wait.",
         responses=problem_responses(503))
    async def lag(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        lags = await read_lags_async(pool)
        followers = [item.as_json(alert_s) for item in lags]
        stuck = [item.name for item in lags if item.stuck(alert_s)]
        if not stuck:
            return Response({"status": "ok", "alert_s": alert_s, "followers": followers})
        return problem_response(
            request, status=503, slug="followers-behind", title="Followers behind the log",
            detail=f"events have waited more than {alert_s:g} s for: {', '.join(stuck)}",
            extensions={"alert_s": alert_s, "followers": followers})

    return Router(path="/v1/health", route_handlers=[lag], tags=["operations"])
