"""The ledger's own counters: the writer's queue and batches, and what authorize answers.

They are counted where the work happens (messaging.py: Writer, UsageIntake, Authorizer), in
the process doing it, so they follow the process model of services/http/metrics.py:

- one process per port (the default, `make run`): each process serves its own figures;
- several processes on one port (HTTP_REUSE_PORT=true): set PROMETHEUS_MULTIPROC_DIR and
  any process answers a scrape with the sum over all of them. The queue depth is a gauge
  summed over live processes (`livesum`); a process that stops cleanly drops its own
  (services/http/metrics.py forget_process), one that crashed leaves its last depth until the
  directory is emptied at the next start of the service's processes.

Cheap on purpose: authorize is the hot path, so a reply costs one increment of a child bound
at import (no label look-up, about 0.4 us, 1 us in multiprocess mode), a batch one histogram
observation; no label carries an account id, so series are few and fixed.
"""

from __future__ import annotations

from typing import Final, get_args

from prometheus_client import Counter, Gauge, Histogram

from contracts.ledger import AuthorizeRejection, AuthorizeReply

# messaging.Priority, most urgent first (the writer's queue order).
WRITER_PRIORITIES: Final = ("authorize", "http", "intake")
# Powers of two up to the largest batch (messaging.INTAKE_BATCH_SIZE_MAX, 5,000).
BATCH_SIZE_BUCKETS: Final = tuple(float(2 ** n) for n in range(14))
AUTHORIZE_OUTCOMES: Final = ("approved", *get_args(AuthorizeRejection))
OTHER_OUTCOME: Final = "other"

WRITER_QUEUE_DEPTH = Gauge(
    "ledger_writer_queue_depth",
    "Jobs waiting for the writer thread (an authorize batch, an intake batch, one operator"
    " write or sweep), by priority.",
    ["priority"], multiprocess_mode="livesum")
WRITER_BATCH_SIZE = Histogram(
    "ledger_writer_batch_size",
    "Items per writer job: authorize requests committed together (kind=authorize), usage"
    " messages applied in one transaction (kind=intake).",
    ["kind"], buckets=BATCH_SIZE_BUCKETS)
AUTHORIZE_REPLIES = Counter(
    "ledger_authorize_replies",
    "ledger.v1.authorize answers, by outcome: approved, or the refusal reason.",
    ["outcome"])

# Bound once: every series exists from the start (at 0), and counting costs no look-up.
WRITER_QUEUE_DEPTHS: Final = tuple(WRITER_QUEUE_DEPTH.labels(p) for p in WRITER_PRIORITIES)
AUTHORIZE_BATCH_SIZE: Final = WRITER_BATCH_SIZE.labels("authorize")
INTAKE_BATCH_SIZE: Final = WRITER_BATCH_SIZE.labels("intake")
_REPLIES: Final = {outcome: AUTHORIZE_REPLIES.labels(outcome) for outcome in AUTHORIZE_OUTCOMES}
_OTHER_REPLY: Final = AUTHORIZE_REPLIES.labels(OTHER_OUTCOME)


def count_reply(reply: AuthorizeReply) -> None:
    outcome = "approved" if reply.approved else reply.reason
    _REPLIES.get(outcome or OTHER_OUTCOME, _OTHER_REPLY).inc()
