"""LEDGER_DATABASES: the partition -> database map (ledger_service/databases.py)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.partitioning import partition_of
from ledger_service.command_routing import open_partition
from ledger_service.databases import account_id_in, parse_database_map, ranges_text
from ledger_service.settings import LedgerSettings
from services.settings import SettingsError, load_settings

A = "postgresql://postgres@127.0.0.1:5432/ledger_a"
B = "postgresql://postgres@127.0.0.1:5432/ledger_b"


def test_two_ranges_make_two_groups_in_order() -> None:
    databases = parse_database_map(f"0-7={A}; 8-15={B}", 16)
    assert [g.partitions for g in databases] == [tuple(range(8)), tuple(range(8, 16))]
    assert [g.url for g in databases] == [A, B]
    assert databases.group_of_partition(8).name == "g1"
    assert databases.named("g1") is databases.named("1") is databases.groups[1]
    assert databases.group_of_url(B + "?sslmode=disable") is databases.groups[1]
    assert databases.groups[1].label == "group g1 (partitions 8-15, database ledger_b)"


def test_a_group_may_hold_scattered_partitions_and_urls_keep_their_query() -> None:
    url = B + "?sslmode=disable&options=-c%20statement_timeout%3D5000"
    databases = parse_database_map(f"0-3,8-11={A};4-7,12-15={url}", 16)
    assert databases.groups[1].partitions == (4, 5, 6, 7, 12, 13, 14, 15)
    assert databases.groups[1].url == url


@pytest.mark.parametrize(("text", "message"), [
    (f"0-7={A};8-14={B}", "leaves partitions 15 in no group"),
    (f"0-8={A};8-15={B}", "partition 8 is in group g0 and in group g1"),
    (f"0-7={A};8-16={B}", "partition 16 is out of range"),
    (f"7-0={A};8-15={B}", "runs backwards"),
    (f"0-7={A};8-15={A}", "name the same database"),
    (f"0-7={A};8-15=mysql://x/y", "must start with postgresql://"),
    (f"0-7 {A}", "must be partitions = URL"),
    (f"a-b={A}", "must be partitions = URL"),
    (" ; ", "is empty"),
])
def test_a_bad_map_is_refused_naming_the_fault(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_database_map(text, 16)


@st.composite
def partitions_cut(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    """A partition count and a random split of its partitions into groups."""
    partitions = draw(st.integers(1, 64))
    groups = draw(st.integers(1, min(partitions, 6)))
    owner = draw(st.lists(st.integers(0, groups - 1), min_size=partitions, max_size=partitions))
    split = [[p for p in range(partitions) if owner[p] == g] for g in range(groups)]
    return partitions, [members for members in split if members]


@given(partitions_cut())
def test_every_partition_is_in_exactly_one_group(cut: tuple[int, list[list[int]]]) -> None:
    partitions, split = cut
    text = ";".join(f"{ranges_text(tuple(members))}=postgresql://h/db{i}"
                    for i, members in enumerate(split))
    databases = parse_database_map(text, partitions)
    for p in range(partitions):
        holders = [g for g in databases if p in g.partitions]
        assert len(holders) == 1
        assert holders[0] is databases.group_of_partition(p)
    assert [list(g.partitions) for g in databases] == split


@given(partitions_cut(), st.data())
def test_a_gap_or_an_overlap_is_always_refused(cut: tuple[int, list[list[int]]],
                                               data: st.DataObject) -> None:
    partitions, split = cut
    victim = data.draw(st.integers(0, partitions - 1))
    gap = [[p for p in members if p != victim] for members in split]
    text = ";".join(f"{ranges_text(tuple(m))}=postgresql://h/db{i}"
                    for i, m in enumerate(gap) if m)
    if text:
        with pytest.raises(SettingsError, match="in no group"):
            parse_database_map(text, partitions)
    overlap = ";".join(f"{ranges_text(tuple(sorted({*m, victim})))}=postgresql://h/db{i}"
                       for i, m in enumerate(split))
    if len(split) > 1:
        with pytest.raises(SettingsError, match=f"partition {victim} is in group"):
            parse_database_map(overlap, partitions)


def test_new_account_ids_fall_in_the_group() -> None:
    databases = parse_database_map(f"0-2={A};3-15={B}", 16)
    for _ in range(200):
        assert partition_of(account_id_in(databases.groups[0], 16), 16) in (0, 1, 2)


def settings(**environ: str) -> LedgerSettings:
    return load_settings(LedgerSettings, service_name="ledger_service", http_port_default=8001,
                         environ={"NATS_URL": "nats://127.0.0.1:4222", **environ})


def test_a_process_serves_the_group_of_its_database_url_or_the_one_it_is_given() -> None:
    both = f"0-7={A};8-15={B}"
    by_url = settings(DATABASE_URL=B, LEDGER_DATABASES=both)
    assert by_url.database_url == B and by_url.anchor_dir.endswith("anchors/g1")
    named = settings(DATABASE_URL="postgresql://other/x", LEDGER_DATABASES=both,
                     LEDGER_DATABASE_GROUP="g0")
    assert named.database_url == A
    plain = settings(DATABASE_URL=A)
    assert plain.database_url == A and plain.anchor_dir == ".run/anchors"
    with pytest.raises(SettingsError, match="none of LEDGER_DATABASES"):
        settings(DATABASE_URL="postgresql://other/x", LEDGER_DATABASES=both)
    with pytest.raises(SettingsError, match="not a group"):
        settings(DATABASE_URL=A, LEDGER_DATABASES=both, LEDGER_DATABASE_GROUP="3")
    with pytest.raises(SettingsError, match="needs LEDGER_DATABASES"):
        settings(DATABASE_URL=A, LEDGER_DATABASE_GROUP="1")
    with pytest.raises(SettingsError, match="out of range"):
        settings(DATABASE_URL=A, LEDGER_DATABASES=both, LEDGER_PARTITIONS="8")


def test_open_goes_to_the_partition_of_its_id_or_of_its_key() -> None:
    chosen = uuid.uuid4()
    assert open_partition(f'{{"account_id": "{chosen}"}}'.encode(), "k", 16) == \
        partition_of(chosen, 16)
    by_key = open_partition(b'{"type": "prepay"}', "key-1", 16)
    assert by_key == open_partition(b'{"type": "postpay"}', "key-1", 16)
    assert open_partition(b'{"type": "prepay"}', None, 16) is None
    assert open_partition(b"not json", None, 16) is None
