"""Subjects and streams: every event is stored once, requests and dead letters stay apart."""

from __future__ import annotations

import msgspec.inspect as mi
import pytest

from contracts import subjects
from contracts.subjects import (
    DEADLETTERS,
    EVENTS,
    LEDGER_AUTHORIZE,
    MESSAGES,
    NATS_MSG_ID_FIELD,
    REPLIES,
    REQUESTS,
    STREAMS,
    dead_letter_subject,
    stream_of,
    subject_matches,
)


def test_streams_are_those_of_the_contract_plus_dead_letters_and_anchors() -> None:
    assert STREAMS == {
        "USAGE": ["usage.v1.>"],
        "LEDGER": ["ledger.v1.events.>"],
        "ANCHORS": ["ledger.v1.anchors"],
        "PAYMENTS": ["payments.v1.>"],
        "INVOICING": ["invoicing.v1.>"],
        "CATALOG": ["catalog.v1.>"],
        "DEADLETTER": ["deadletter.v1.>"],
    }


def test_subject_names_are_those_of_the_contract() -> None:
    assert subjects.USAGE_RECORDED == "usage.v1.recorded"
    assert LEDGER_AUTHORIZE == "ledger.v1.authorize"
    assert {s for s in EVENTS if s.startswith(subjects.LEDGER_EVENTS)} == {
        "ledger.v1.events.entry_posted",
        "ledger.v1.events.balance_low",
        "ledger.v1.events.account_overdrawn",
        "ledger.v1.events.grants_expired",
        "ledger.v1.events.hold_expired",
        "ledger.v1.events.account_updated",
    }
    assert {s for s in EVENTS if s.startswith("payments.")} == {
        "payments.v1.received",
        "payments.v1.refunded",
        "payments.v1.failed",
    }
    assert {s for s in EVENTS if s.startswith("invoicing.")} == {
        "invoicing.v1.issued",
        "invoicing.v1.paid",
        "invoicing.v1.voided",
        "invoicing.v1.credit_note_issued",
        "invoicing.v1.overdue",
        "invoicing.v1.recurring.charged",
        "invoicing.v1.recurring.past_due",
        "invoicing.v1.recurring.suspended",
        "invoicing.v1.recurring.resumed",
        "invoicing.v1.customer_updated",
    }
    assert subjects.CATALOG_PRICES_UPDATED == "catalog.v1.prices_updated"


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("ledger.v1.events.>", "ledger.v1.events.entry_posted", True),
        ("ledger.v1.events.>", "ledger.v1.events.a.b", True),
        ("ledger.v1.events.>", "ledger.v1.events", False),
        ("ledger.v1.events.>", "ledger.v1.authorize", False),
        ("usage.v1.>", "usage.v2.recorded", False),
        ("usage.*.recorded", "usage.v1.recorded", True),
        ("usage.*.recorded", "usage.v1.x.recorded", False),
        ("usage.v1.recorded", "usage.v1.recorded", True),
        ("usage.v1.recorded", "usage.v1.recorded.x", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


@pytest.mark.parametrize("subject", sorted(EVENTS))
def test_every_event_subject_is_stored_by_exactly_one_stream(subject: str) -> None:
    holders = [
        name for name, patterns in STREAMS.items() if any(subject_matches(p, subject) for p in patterns)
    ]
    assert len(holders) == 1
    assert stream_of(subject) == holders[0]
    # Streams are named after their subjects' first token; anchors are the ledger's, kept apart.
    expected = "anchors" if subject == "ledger.v1.anchors" else subject.split(".", 1)[0]
    assert holders[0].lower() == expected


def test_authorize_is_outside_every_stream_so_jetstream_does_not_answer_it() -> None:
    for name, patterns in STREAMS.items():
        for pattern in patterns:
            assert not subject_matches(pattern, LEDGER_AUTHORIZE), name
    assert stream_of(LEDGER_AUTHORIZE) is None


@pytest.mark.parametrize("subject", sorted([*EVENTS, *REQUESTS]))
def test_dead_letters_land_only_in_the_dead_letter_stream(subject: str) -> None:
    dead = dead_letter_subject(subject)
    assert dead == "deadletter.v1." + subject
    assert stream_of(dead) == "DEADLETTER"
    assert subject_matches(DEADLETTERS, dead)
    other_patterns = [p for name, ps in STREAMS.items() if name != "DEADLETTER" for p in ps]
    assert not any(subject_matches(p, dead) for p in other_patterns)


def test_messages_cover_events_requests_and_dead_letters() -> None:
    assert MESSAGES.keys() == {*EVENTS, *REQUESTS, DEADLETTERS}
    assert REPLIES.keys() == REQUESTS.keys() == {LEDGER_AUTHORIZE}


@pytest.mark.parametrize("subject", sorted({*EVENTS, DEADLETTERS}))
def test_every_stored_message_names_a_required_field_for_its_nats_msg_id(subject: str) -> None:
    info = mi.type_info(MESSAGES[subject])
    assert isinstance(info, mi.StructType)
    fields = {field.name: field for field in info.fields}
    key = NATS_MSG_ID_FIELD[subject]
    assert key in fields
    assert fields[key].required


def test_nats_msg_id_fields_are_known_only_for_stored_subjects() -> None:
    assert NATS_MSG_ID_FIELD.keys() == {*EVENTS, DEADLETTERS}
