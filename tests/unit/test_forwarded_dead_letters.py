"""A usage message forwarded to its partition's owner and dead-lettered there is set aside as
the producer sent it: its subject and its Nats-Msg-Id, so the producer's id finds it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ledger_service.messaging import FORWARDED_ID_PREFIX, forwarded_headers
from services.consumer import dead_letter


def js_message(subject: str, headers: dict[str, str], data: bytes = b"{}") -> Any:
    metadata = SimpleNamespace(stream="USAGE", sequence=SimpleNamespace(stream=42),
                               num_delivered=1)
    return SimpleNamespace(subject=subject, headers=headers, data=data, metadata=metadata)


def test_a_forwarded_message_is_dead_lettered_under_the_producers_subject_and_id() -> None:
    original = js_message("usage.v1.recorded", {"Nats-Msg-Id": "producer-7"})
    headers = forwarded_headers(original)
    assert headers["Nats-Msg-Id"] == FORWARDED_ID_PREFIX + "producer-7"  # not a repeat
    copy = js_message("usage.v1.part.3.8a6e0804-2bd0-4672-b79d-d97027f9071a", headers)
    letter = dead_letter(copy, "rejected", "unknown product", consumer="ledger-usage-p3")
    assert letter.msg_id == "producer-7"
    assert letter.subject == "usage.v1.recorded"


def test_a_message_never_forwarded_keeps_its_own_subject_and_id() -> None:
    letter = dead_letter(js_message("usage.v1.recorded", {"Nats-Msg-Id": "m-1"}),
                         "invalid_payload", "bad", consumer="ledger-usage")
    assert (letter.subject, letter.msg_id) == ("usage.v1.recorded", "m-1")
