"""Read models of the ledger, built from the event log, and the tools that check them.

Modules: statement (which events are statement entries, their kind, signed amount and text:
shared with the publisher), decoding (stored rows to events, fast), builders (the four
projections: balances, statement, usage, holds), runner (batched exactly-once catch-up, the
service's background runner, rebuild into shadow tables), tables (shadow tables and the
swap), replay (an account from its events alone, at any instant), verify (the log and the
projections against a replay), reads (portal reads under row-level security).

Decisions where the issue was silent
------------------------------------
- Positions are notification ids of ledger_events, one row per projection in
  projection_positions, updated in the batch's transaction. One runner batch feeds all four
  projections from one read and one decode; each skips events at or below its own position,
  so a projection rebuilt ahead of the others simply waits for them.
- Batches: 500 notifications for the live runner, 2,000 for a rebuild. Projection sessions
  use synchronous_commit=off: a crash can lose the last few batch commits, never half of one,
  and the lost ones are re-applied from the log on restart (rows and position go together).
- One advisory lock serialises batches of every runner on a database (two service processes
  may both run one) and the final stretch plus swap of a rebuild. A rebuild of a projection
  refuses to start while another rebuild of it runs.
- Balances are computed by the aggregate itself: the runner keeps the accounts it has seen
  in memory (bounded LRU) and applies each event with the aggregate's own `mutate`; an
  account it does not hold, or holds at the wrong version (another process moved ahead, a
  batch rolled back), is loaded from the event store (latest snapshot + events).
- Statement order is the order entries were posted (entry_seq = notification id * 8192 +
  line), which is the order balance_after runs in; `from`/`to` filter on occurred_at (the
  usage line's own time for usage, the posting time otherwise). An entry's amount is its
  effect on the balance, so balance_after(n) = balance_after(n-1) + amount(n) always holds.
- Usage counts billed lines (a failed message's released hold is not usage), per UTC day of
  the line's occurred_at and product; refunds are statement entries, not negative usage.
- The tenant of an account is the account (CONTRACTS: tenant_id is the account id); every
  tenant-scoped row carries tenant_id = account_id so the policy needs no join.
"""
