"""Which PostgreSQL database holds which account partitions: LEDGER_DATABASES.

Unset, every partition lives in DATABASE_URL (one database, as before). Set, it maps ranges
of partitions to databases, each a complete ledger of its own (events, snapshots,
projections, idempotency keys, leases, members, anchors) for the accounts of its partitions:

    LEDGER_DATABASES="0-7=postgresql://db-a/ledger;8-15=postgresql://db-b/ledger"

Each `;`-separated entry is a *group*: partitions (`N`, `N-M`, comma-separated) `=` a
PostgreSQL URL. Group numbers follow the order of the entries (the first is group 0). Every
partition 0 .. LEDGER_PARTITIONS-1 is in exactly one group, and each group has a database of
its own; anything else is refused at start with a SettingsError naming what is wrong.

A ledger process serves one group (docs/scaling.md, "Partitions across databases"): the one
LEDGER_DATABASE_GROUP names, or else the one whose URL is its DATABASE_URL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final
from uuid import UUID

from contracts.partitioning import partition_of
from services.database import parse_database_url, url_parameters
from services.settings import SettingsError

_RANGES: Final = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True, slots=True)
class DatabaseGroup:
    """One database of the map and the partitions it holds."""

    index: int
    partitions: tuple[int, ...]  # ascending
    url: str

    @property
    def name(self) -> str:
        return f"g{self.index}"

    @property
    def label(self) -> str:
        """For an operator: `group g1 (partitions 8-15, database ledger_b)`."""
        return (f"group {self.name} (partitions {ranges_text(self.partitions)},"
                f" database {parse_database_url(self.url).dbname})")


@dataclass(frozen=True, slots=True)
class DatabaseMap:
    """Every partition's group; `groups` in the order the setting lists them."""

    partitions: int
    groups: tuple[DatabaseGroup, ...]

    def __iter__(self) -> Iterator[DatabaseGroup]:
        return iter(self.groups)

    def group_of_partition(self, partition: int) -> DatabaseGroup:
        for group in self.groups:
            if partition in group.partitions:
                return group
        raise ValueError(f"partition {partition} is in no group")

    def group_of_account(self, account_id: UUID | str) -> DatabaseGroup:
        return self.group_of_partition(partition_of(account_id, self.partitions))

    def named(self, name: str) -> DatabaseGroup:
        """A group by number (`1`) or name (`g1`)."""
        wanted = name.strip().lower().removeprefix("g")
        for group in self.groups:
            if wanted == str(group.index):
                return group
        raise SettingsError(f"LEDGER_DATABASE_GROUP {name!r} is not a group of LEDGER_DATABASES"
                            f" (groups: {', '.join(g.name for g in self.groups)})")

    def group_of_url(self, url: str) -> DatabaseGroup | None:
        """The group whose database `url` names (same host, port, user and database)."""
        wanted = _identity(url)
        return next((g for g in self.groups if _identity(g.url) == wanted), None)


def account_id_in(group: DatabaseGroup, partitions: int) -> UUID:
    """A new random account id whose partition is in `group`: drawn again until it is (on
    average partitions / len(group.partitions) draws, 2 for two groups of eight)."""
    members = frozenset(group.partitions)
    while True:
        account_id = uuid.uuid4()
        if partition_of(account_id, partitions) in members:
            return account_id


def _identity(url: str) -> tuple[str, str, str, str]:
    values = url_parameters(url)
    return values["host"], values["port"], values["user"], values["dbname"]


def ranges_text(partitions: tuple[int, ...]) -> str:
    """`0-7,12` for (0, 1, ..., 7, 12)."""
    spans: list[str] = []
    start = previous = None
    for p in partitions:
        if previous is not None and p == previous + 1:
            previous = p
            continue
        if start is not None:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = p
    if start is not None:
        spans.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(spans)


def parse_database_map(text: str, partitions: int) -> DatabaseMap:
    """LEDGER_DATABASES, checked: every partition in exactly one group, each group's URL a
    valid PostgreSQL URL naming a database no other group names."""
    groups: list[DatabaseGroup] = []
    seen: dict[int, int] = {}
    entries = [entry.strip() for entry in text.split(";") if entry.strip()]
    if not entries:
        raise SettingsError("LEDGER_DATABASES is empty: give `0-7=postgresql://...;8-15=...`")
    for index, entry in enumerate(entries):
        spec, equals, url = entry.partition("=")
        spec, url = spec.replace(" ", ""), url.strip()
        if not equals or not _RANGES.fullmatch(spec):
            raise SettingsError(f"LEDGER_DATABASES entry {index + 1} ({spec or entry!r}) must be"
                                " partitions = URL, such as 0-7=postgresql://host/ledger_a")
        members: list[int] = []
        for span in spec.split(","):
            first, _, last = span.partition("-")
            low, high = int(first), int(last or first)
            if low > high:
                raise SettingsError(f"LEDGER_DATABASES: range {span} runs backwards")
            if high >= partitions:
                raise SettingsError(f"LEDGER_DATABASES: partition {high} is out of range;"
                                    f" LEDGER_PARTITIONS is {partitions} (0-{partitions - 1})")
            for p in range(low, high + 1):
                if p in seen:
                    raise SettingsError(f"LEDGER_DATABASES: partition {p} is in group g{seen[p]}"
                                        f" and in group g{index}")
                seen[p] = index
                members.append(p)
        try:
            parse_database_url(url)
        except ValueError as exc:
            raise SettingsError(f"LEDGER_DATABASES group g{index}: {exc}") from None
        groups.append(DatabaseGroup(index=index, partitions=tuple(sorted(members)), url=url))
    missing = [p for p in range(partitions) if p not in seen]
    if missing:
        raise SettingsError(f"LEDGER_DATABASES leaves partitions {ranges_text(tuple(missing))}"
                            f" in no group; every one of 0-{partitions - 1} needs a database")
    identities = [_identity(g.url) for g in groups]
    for index, identity in enumerate(identities):
        if identity in identities[:index]:
            raise SettingsError(f"LEDGER_DATABASES: groups g{identities.index(identity)} and"
                                f" g{index} name the same database; each group needs its own")
    return DatabaseMap(partitions=partitions, groups=tuple(groups))
