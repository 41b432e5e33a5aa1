"""The exported schemas are current, deterministic, and well-formed enough to resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts import export, subjects
from contracts.http import BODIES


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return export.render()


def test_committed_schemas_match_the_contracts(rendered: dict[str, str]) -> None:
    stale = export.stale_files(export.SCHEMA_DIR, rendered)
    assert stale == [], f"run `python -m contracts.export`; stale: {stale}"


def test_rendering_is_deterministic(rendered: dict[str, str]) -> None:
    assert export.render() == rendered
    for name, text in rendered.items():
        assert text.endswith("}\n"), name
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name


def test_there_is_one_schema_per_subject_plus_reply_bodies_and_asyncapi(
    rendered: dict[str, str],
) -> None:
    expected = {f"{s}.json" for s in [*subjects.EVENTS, *subjects.REQUESTS]}
    expected |= {"ledger.v1.authorize.reply.json", "deadletter.v1.json"}
    expected |= {"http-bodies.json", "asyncapi.json"}
    assert set(rendered) == expected


def test_check_mode_fails_on_missing_changed_or_leftover_files(tmp_path: Path) -> None:
    assert export.main(["--check", "--out", str(tmp_path / "absent")]) == 1
    assert export.main(["--check", "--out", str(tmp_path)]) == 1
    assert export.main(["--out", str(tmp_path)]) == 0
    assert export.main(["--check", "--out", str(tmp_path)]) == 0

    usage = tmp_path / "usage.v1.recorded.json"
    usage.write_text(usage.read_text().replace("quantity", "qty"))
    assert export.main(["--check", "--out", str(tmp_path)]) == 1
    assert export.main(["--out", str(tmp_path)]) == 0

    (tmp_path / "usage.v0.recorded.json").write_text("{}\n")
    assert export.main(["--check", "--out", str(tmp_path)]) == 1
    assert export.main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "usage.v0.recorded.json").exists()
    assert export.main(["--check", "--out", str(tmp_path)]) == 0


def test_message_schema_carries_constraints(rendered: dict[str, str]) -> None:
    schema = json.loads(rendered["usage.v1.recorded.json"])
    usage = schema["$defs"]["UsageRecorded"]
    assert schema["$ref"] == "#/$defs/UsageRecorded"
    assert set(usage["required"]) == {
        "event_id",
        "account_id",
        "product",
        "quantity",
        "occurred_at",
        "status",
    }
    assert usage["properties"]["quantity"]["exclusiveMinimum"] == 0
    assert usage["properties"]["event_id"]["maxLength"] == 128
    assert sorted(usage["properties"]["status"]["enum"]) == ["delivered", "failed", "submitted"]
    assert "\n    " not in usage["description"], "docstring indentation leaked into the schema"


def test_http_bodies_schema_defines_every_body(rendered: dict[str, str]) -> None:
    definitions = json.loads(rendered["http-bodies.json"])["$defs"]
    assert {body.__name__ for body in BODIES} <= definitions.keys()
    memo = definitions["Adjustment"]["properties"]["memo"]
    assert (memo["minLength"], memo["maxLength"]) == (10, 500)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves(rendered: dict[str, str]) -> None:
    for name, text in rendered.items():
        document = json.loads(text)
        refs = _refs(document)
        assert refs, name
        for ref in refs:
            _resolve(document, ref)  # a KeyError names the dangling reference


def test_asyncapi_has_a_channel_per_subject_and_authorize_as_request_reply(
    rendered: dict[str, str],
) -> None:
    document = json.loads(rendered["asyncapi.json"])
    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    for subject in subjects.EVENTS:
        assert channels[subject]["address"] == subject
        assert channels[subject]["x-stream"] == subjects.stream_of(subject)
    assert "x-stream" not in channels[subjects.LEDGER_AUTHORIZE]
    answer = document["operations"]["answerAuthorizeRequest"]
    assert answer["action"] == "receive"
    reply = _resolve(document, answer["reply"]["messages"][0]["$ref"])
    assert _resolve(document, reply["$ref"])["payload"] == {"$ref": "#/components/schemas/AuthorizeReply"}
    published = {op["channel"]["$ref"] for op in document["operations"].values()}
    assert published >= {f"#/channels/{subject}" for subject in subjects.EVENTS}
