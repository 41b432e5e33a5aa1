"""Write the contracts as JSON Schema and AsyncAPI 3.0 to contracts/schema/.

    python -m contracts.export            # (re)write the files
    python -m contracts.export --check    # exit 1, listing them, if any file is stale

Output is deterministic (sorted keys, two-space indent, trailing newline) so that a test can
tell a forgotten export from a current one. The AsyncAPI document is assembled here because
FastStream's generator only understands pydantic models.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from contracts import subjects
from contracts.http import BODIES

SCHEMA_DIR: Final = Path(__file__).parent / "schema"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE: Final = "asyncapi.json"
HTTP_BODIES_FILE: Final = "http-bodies.json"
REPLY_SUFFIX: Final = ".reply"

PUBLISHERS: Final = {
    "usage": "internal services (messaging gateways, number and AI services)",
    "ledger": "ledger_service",
    "payments": "payments_service",
    "invoicing": "invoicing_service",
    "catalog": "sync_service (from HubSpot) or an operator",
    "deadletter": "any consumer that gives up on a message",
}

Json = dict[str, Any]


def render() -> dict[str, str]:
    """Every file of contracts/schema/, by name, as its exact text."""
    documents: dict[str, Json] = {
        schema_file(subject): message_schema(subject, cls)
        for subject, cls in subjects.MESSAGES.items()
    }
    for subject, cls in subjects.REPLIES.items():
        documents[schema_file(subject + REPLY_SUFFIX)] = message_schema(
            subject + REPLY_SUFFIX, cls
        )
    documents[HTTP_BODIES_FILE] = http_bodies_schema()
    documents[ASYNCAPI_FILE] = asyncapi()
    return {name: to_text(document) for name, document in documents.items()}


def schema_file(subject: str) -> str:
    """`usage.v1.recorded.json`; a wildcard subject drops its `.>`."""
    return subject.removesuffix(".>") + ".json"


def to_text(document: Json) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def message_schema(subject: str, cls: type[msgspec.Struct]) -> Json:
    schema = msgspec.json.schema(cls)
    _clean_descriptions(schema["$defs"].values())
    return {"$schema": JSON_SCHEMA_DIALECT, "title": subject, **schema}


def http_bodies_schema() -> Json:
    _, components = msgspec.json.schema_components(BODIES, ref_template="#/$defs/{name}")
    _clean_descriptions(components.values())
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "HTTP request and response bodies",
        "$defs": components,
    }


def asyncapi() -> Json:
    """AsyncAPI 3.0: a channel per subject, a send operation per event stream subject, and
    the ledger's authorize as a receive operation with a reply."""
    structs = [*subjects.MESSAGES.values(), *subjects.REPLIES.values()]
    _, schemas = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    _clean_descriptions(schemas.values())
    channels: Json = {}
    operations: Json = {}
    messages: Json = {}
    for subject, cls in subjects.EVENTS.items():
        messages[cls.__name__] = _message(subject, cls)
        channels[subject] = _channel(subject, cls, subjects.stream_of(subject))
        operations["publish" + cls.__name__] = _operation("send", subject, cls, subject)
    _add_authorize(channels, operations, messages)
    _add_by_account(channels, operations)
    _add_dead_letters(channels, operations, messages)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "billing-ledger messages",
            "version": "1.0.0",
            "description": "NATS subjects of the billing ledger. Events are stored in "
            "JetStream streams (see each channel's x-stream); publishers set the "
            "Nats-Msg-Id header to the payload field named in each message's headers.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _add_authorize(channels: Json, operations: Json, messages: Json) -> None:
    subject = subjects.LEDGER_AUTHORIZE
    request, reply = subjects.REQUESTS[subject], subjects.REPLIES[subject]
    reply_channel = subject + REPLY_SUFFIX
    messages[request.__name__] = _message(subject, request) | {
        "correlationId": {"location": "$message.payload#/request_id"}
    }
    messages[reply.__name__] = _message(reply_channel, reply)
    channels[subject] = _channel(subject, request, stream=None)
    # A null address: the reply goes to the requester's inbox, known only at run time.
    channels[reply_channel] = _channel(None, reply, stream=None) | {
        "description": "The requester's inbox: the reply subject of the NATS request."
    }
    operations["answer" + request.__name__] = _operation("receive", subject, request, subject) | {
        "description": "ledger_service answers on core NATS (request-reply); the same "
        "request_id gets the same reply.",
        "reply": {
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{reply.__name__}"}],
        },
    }


ACCOUNT_PARAMETER: Final = {
    "account_id": {"description": "The payload's account_id, as a lower-case UUID string. "
                   "Added in v1 beside the subject without it, which keeps working; the ledger "
                   "routes these to the account's partition owner (docs/scaling.md)."}
}


def _add_by_account(channels: Json, operations: Json) -> None:
    """`usage.v1.recorded.{account_id}` and `ledger.v1.authorize.{account_id}`: the same
    messages as the subjects they extend, with the account in the subject."""
    for subject, template in subjects.BY_ACCOUNT.items():
        channel = subject + ".by_account"
        if subject in subjects.EVENTS:
            cls = subjects.EVENTS[subject]
            channels[channel] = _channel(template, cls, subjects.stream_of(
                subjects.wildcard(template))) | {"parameters": ACCOUNT_PARAMETER}
            operations["publish" + cls.__name__ + "ByAccount"] = _operation(
                "send", channel, cls, subject)
            continue
        request, reply = subjects.REQUESTS[subject], subjects.REPLIES[subject]
        reply_channel = subject + REPLY_SUFFIX
        channels[channel] = _channel(template, request, stream=None) | {
            "parameters": ACCOUNT_PARAMETER}
        operations["answer" + request.__name__ + "ByAccount"] = _operation(
            "receive", channel, request, subject) | {
            "description": "As " + subject + ", answered by the account's partition owner.",
            "reply": {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{reply.__name__}"}],
            },
        }


def _add_dead_letters(channels: Json, operations: Json, messages: Json) -> None:
    subject, channel = subjects.DEADLETTERS, "deadletter"
    cls = subjects.MESSAGES[subject]
    messages[cls.__name__] = _message(subject, cls)
    address = subjects.DEADLETTER_PREFIX + "{subject}"
    channels[channel] = _channel(address, cls, subjects.stream_of(subject)) | {
        "parameters": {
            "subject": {"description": "The original subject, e.g. usage.v1.recorded"}
        }
    }
    operations["publish" + cls.__name__] = _operation("send", channel, cls, subject)


def _channel(address: str | None, cls: type[msgspec.Struct], stream: str | None) -> Json:
    channel: Json = {
        "address": address,
        "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"}},
    }
    if stream is not None:
        channel["x-stream"] = stream
    return channel


def _operation(action: str, channel: str, cls: type[msgspec.Struct], subject: str) -> Json:
    publisher = PUBLISHERS[subject.split(".", 1)[0]]
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{cls.__name__}"}],
        "description": f"Published by {publisher}.",
    }


def _message(subject: str, cls: type[msgspec.Struct]) -> Json:
    message: Json = {
        "name": cls.__name__,
        "title": subject,
        "summary": inspect.cleandoc(cls.__doc__ or cls.__name__).split("\n", 1)[0],
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
    }
    key_field = subjects.NATS_MSG_ID_FIELD.get(subject)
    if key_field is not None:
        message["headers"] = {
            "type": "object",
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "description": f"Equal to the payload's `{key_field}`",
                }
            },
            "required": ["Nats-Msg-Id"],
        }
    return message


def _clean_descriptions(definitions: Iterable[Json]) -> None:
    # msgspec copies class docstrings verbatim, indentation of continuation lines included.
    for definition in definitions:
        if "description" in definition:
            definition["description"] = inspect.cleandoc(definition["description"])


def stale_files(directory: Path, rendered: dict[str, str]) -> list[str]:
    """Files that differ from `rendered`, are missing, or are no longer generated."""
    present = {path.name for path in directory.glob("*.json")}
    differing = [
        name
        for name, text in rendered.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    return sorted([*differing, *(present - rendered.keys())])


def write(directory: Path, rendered: dict[str, str]) -> list[str]:
    """Bring `directory` up to date; returns the names of the files changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = stale_files(directory, rendered)
    for name in changed:
        if name in rendered:
            (directory / name).write_text(rendered[name], encoding="utf-8")
        else:
            (directory / name).unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="output directory")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        stale = stale_files(args.out, rendered) if args.out.is_dir() else sorted(rendered)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        if stale:
            print("run: python -m contracts.export", file=sys.stderr)
        return 1 if stale else 0
    for name in write(args.out, rendered):
        print(f"wrote: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
