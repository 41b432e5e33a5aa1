"""HTTP commands of an account applied by the process that owns its partition.

With several ledger processes, usage and authorize requests reach an account's owner through
NATS (ledger_service/partitions.py). An operator's HTTP write (`POST`, `PUT`, `PATCH`,
`DELETE` under `/v1/accounts/{id}/...`) may arrive at any of them: this ASGI layer passes it
through when this process owns the account's partition, and otherwise forwards the whole
request (method, path, query, headers, body) to the owner over core NATS request-reply on
`ledger.v1.commands.part.<p>` and answers with the owner's response, byte for byte. The owner
runs it through its own HTTP stack (authentication, validation, idempotency), so nothing about
a command depends on which process the client reached.

What stays local: reads; `POST /v1/accounts` (a new account has no owner until it exists; its
id may be absent from the path) and `POST /v1/charges` (many accounts in one transaction);
and any command whose owner does not answer within the hand-over time (a partition between
owners): the event store's optimistic concurrency keeps those exact, and a refusal decided
on a stale cache is decided again (Ledger.run). A single process owns every partition and
forwards nothing.

With several databases (LEDGER_DATABASES, ledger_service/databases.py) a process can reach
only its own group's database, so it also forwards what concerns another group's accounts:
reads of an account, an open (by the partition of its id, or of its Idempotency-Key), and
each group's share of `POST /v1/charges`; and a command for another group that no owner
answers is refused (503), never applied here (docs/scaling.md, "Partitions across
databases").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final
from uuid import UUID

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.partitioning import fnv1a_32, partition_of
from contracts.subjects import commands_partition_subject
from ledger_service.databases import DatabaseMap
from ledger_service.partitions import PartitionOwner
from services.http.middleware import current_correlation_id, current_request_id

log = structlog.get_logger(__name__)

# Plain ASGI: scopes and messages are dicts, the app and channels callables.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COMMANDS_QUEUE_GROUP: Final = "ledger-commands"
# Marks a request an owner runs for another process: never forwarded again.
FORWARDED_HEADER: Final = b"x-ledger-forwarded"
# On a forwarded command's response: the member id of the process that applied it.
APPLIED_BY_HEADER: Final = b"x-ledger-applied-by"
WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ACCOUNT_PATH: Final = re.compile(r"^/v1/accounts/([0-9a-fA-F-]{36})/")
_READ_PATH: Final = re.compile(r"^/v1/(?:audit/)?accounts/([0-9a-fA-F-]{36})(?:/|$)")
_OPEN_PATHS: Final = frozenset({"/v1/accounts", "/v1/accounts/"})
CHARGES_PATH: Final = "/v1/charges"
# A command's owner answers within this; a partition between owners (about 6 s after a
# process dies) is tried again until HANDOVER_WAIT_S, then the command is applied here.
REQUEST_TIMEOUT_S: Final = 15.0
HANDOVER_WAIT_S: Final = 8.0
RETRY_INTERVAL_S: Final = 0.25
BODY_BYTES_MAX: Final = 1024 * 1024 - 16 * 1024  # within NATS's 1 MiB with the headers
# Hop-by-hop and length headers are the transport's, not the request's.
_DROPPED_HEADERS: Final = frozenset({b"host", b"content-length", b"connection",
                                     b"transfer-encoding", b"keep-alive"})
# Stamped again by this process's request context (with the same ids).
_STAMPED_HEADERS: Final = frozenset({b"x-request-id", b"x-correlation-id", b"content-length"})


class ForwardedRequest(msgspec.Struct, frozen=True):
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class ForwardedResponse(msgspec.Struct, frozen=True):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _OpenedId(msgspec.Struct):
    account_id: UUID | None = None


_open_decoder = msgspec.json.Decoder(_OpenedId)


class _Batch(msgspec.Struct):
    charges: list[msgspec.Raw]


class _Charge(msgspec.Struct):
    account_id: UUID


class _Results(msgspec.Struct):
    results: list[msgspec.Raw]


_batch_decoder = msgspec.json.Decoder(_Batch)
_charge_decoder = msgspec.json.Decoder(_Charge)
_results_decoder = msgspec.json.Decoder(_Results)
_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(ForwardedRequest)
_response_decoder = msgspec.msgpack.Decoder(ForwardedResponse)


def account_of(scope: Scope) -> UUID | None:
    """The account a command is for, from its path; None for what is not routed."""
    if scope.get("type") != "http" or scope.get("method") not in WRITE_METHODS:
        return None
    return _account_in(_ACCOUNT_PATH, scope)


def read_account_of(scope: Scope) -> UUID | None:
    """The account a read is of (`GET /v1/accounts/{id}...`, `/v1/audit/accounts/{id}/...`):
    routed only between the databases of LEDGER_DATABASES."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return None
    return _account_in(_READ_PATH, scope)


def _account_in(pattern: re.Pattern[str], scope: Scope) -> UUID | None:
    match = pattern.match(scope.get("path", ""))
    if match is None:
        return None
    try:
        return UUID(match.group(1))
    except ValueError:
        return None


def open_partition(body: bytes, idempotency_key: str | None, partitions: int) -> int | None:
    """Where `POST /v1/accounts` belongs among several databases: the partition of the
    account id the client chose; without one, a partition chosen by the Idempotency-Key (so a
    retry reaches the same database, where the key is kept); None: anywhere will do."""
    try:
        chosen = _open_decoder.decode(body).account_id
    except (msgspec.DecodeError, ValueError):
        chosen = None  # malformed: the handler answers 400 wherever it runs
    if chosen is not None:
        return partition_of(chosen, partitions)
    if idempotency_key:
        return fnv1a_32(idempotency_key.encode()) % partitions
    return None


class CommandRouter:
    """The ASGI layer (wrap) and the owner's side (add_partition / remove_partition)."""

    def __init__(self) -> None:
        self.owner: PartitionOwner | None = None  # set at start, with the NATS connection
        # LEDGER_DATABASES: an account of another group's database is read and opened there.
        self.databases: DatabaseMap | None = None
        self._nc: NATS | None = None
        self._outer: ASGIApp | None = None  # the whole HTTP stack an owner runs commands on
        self._subscriptions: dict[int, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, app: ASGIApp, outer: ASGIApp) -> ASGIApp:
        """The layer around `app` (inside the request context); `outer` is the whole stack."""
        self._outer = outer

        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            account_id = account_of(scope)
            owner = self.owner
            if self.databases is not None and account_id is None and owner is not None:
                await self._route_between_databases(scope, receive, send, app, owner)
                return
            if (account_id is None or owner is None or self._nc is None or owner.owns_all()
                    or owner.owns_account(account_id) or _forwarded(scope)):
                await app(scope, receive, send)
                return
            await self._forward(scope, receive, send, app,
                                partition_of(account_id, owner.partitions))

        return route

    def connect(self, nc: NATS, owner: PartitionOwner,
                databases: DatabaseMap | None = None) -> None:
        self._nc, self.owner, self.databases = nc, owner, databases

    async def _route_between_databases(self, scope: Scope, receive: Receive, send: Send,
                                       app: ASGIApp, owner: PartitionOwner) -> None:
        """With several databases, what is not an account's command: a read of an account
        of another group goes to that account's owner (whose database has it), and an open
        to the group of the account it opens. The rest runs here."""
        if self._nc is None or _forwarded(scope):
            await app(scope, receive, send)
            return
        read = read_account_of(scope)
        if read is not None:
            partition = partition_of(read, owner.partitions)
            if owner.in_group(partition):
                await app(scope, receive, send)
            else:
                await self._forward(scope, receive, send, app, partition)
            return
        if scope.get("method") == "POST" and scope.get("path") == CHARGES_PATH:
            body, complete = await _read_body(receive)
            await self._charge_across(scope, body if complete else b"", send, app, owner)
            return
        if scope.get("method") == "POST" and scope.get("path") in _OPEN_PATHS:
            body, complete = await _read_body(receive)
            key = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                        if k.lower() == b"idempotency-key"), None)
            target = open_partition(body, key, owner.partitions) if complete else None
            if target is None or owner.in_group(target):
                await app(scope, _replay(body), send)
            else:
                await self._forward(scope, _replay(body), send, app, target)
            return
        await app(scope, receive, send)

    async def _charge_across(self, scope: Scope, body: bytes, send: Send, app: ASGIApp,
                             owner: PartitionOwner) -> None:
        """`POST /v1/charges` with accounts in several databases: each database's fees are
        charged there, as one batch (one transaction) per database, at once; the outcomes
        come back in the order sent. A database that fails answers for the whole request
        (the others' fees are charged: a retry charges each charge_key once)."""
        assert self.databases is not None
        try:
            raws = _batch_decoder.decode(body).charges
            accounts = [_charge_decoder.decode(raw).account_id for raw in raws]
        except (msgspec.DecodeError, msgspec.ValidationError):
            await app(scope, _replay(body), send)  # malformed: the handler answers 400
            return
        parts: dict[int, list[int]] = {}
        for index, account_id in enumerate(accounts):
            partition = partition_of(account_id, owner.partitions)
            parts.setdefault(self.databases.group_of_partition(partition).index, []).append(index)
        if len(parts) <= 1 and (not parts or owner.in_group(partition_of(accounts[0],
                                                                         owner.partitions))):
            await app(scope, _replay(body), send)
            return
        answers = await asyncio.gather(*(
            self._exchange(scope, b'{"charges":[' + b",".join(raws[i] for i in indexes) + b"]}",
                           partition_of(accounts[indexes[0]], owner.partitions), app)
            for indexes in parts.values()))
        failed = next((answer for answer in answers if answer.status != 200), None)
        if failed is not None:
            await _answer(send, failed)
            return
        results: list[bytes] = [b""] * len(accounts)
        for indexes, answer in zip(parts.values(), answers, strict=True):
            for index, result in zip(indexes, _results_decoder.decode(answer.body).results,
                                     strict=True):
                results[index] = result
        await _answer(send, ForwardedResponse(200, [(b"content-type", b"application/json")],
                                              b'{"results":[' + b",".join(results) + b"]}"))

    async def _exchange(self, scope: Scope, body: bytes, partition: int,
                        app: ASGIApp) -> ForwardedResponse:
        """The response to the request `scope` with `body`: run here when `partition` is in
        this process's database, else by the partition's owner."""
        assert self.owner is not None
        if self.owner.in_group(partition):
            headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"]
            local = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            return await _captured(app, local, body)
        response = await self._ask_owner(partition, _encoder.encode(_request_for(scope, body)))
        return response if response is not None else ForwardedResponse(
            503, [(b"content-type", b"application/problem+json"), (b"retry-after", b"1")],
            _NO_OWNER)

    # -- the process the client reached ---------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp,
                       partition: int) -> None:
        body, complete = await _read_body(receive)
        if not complete:
            await _answer(send, ForwardedResponse(413, [(b"content-type", b"text/plain")],
                                                  b"request body too large"))
            return
        response = await self._ask_owner(partition, _encoder.encode(_request_for(scope, body)))
        if response is not None:
            await _answer(send, response)
            return
        if self.owner is not None and not self.owner.in_group(partition):
            # Another database's account: it cannot be applied (or read) here.
            await _answer(send, ForwardedResponse(
                503, [(b"content-type", b"application/problem+json"), (b"retry-after", b"1")],
                _NO_OWNER))
            return
        log.warning("command applied here: no owner answered", partition=partition,
                    path=scope["path"])
        await app(scope, _replay(body), send)

    async def _ask_owner(self, partition: int, payload: bytes) -> ForwardedResponse | None:
        assert self._nc is not None and self.owner is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_WAIT_S
        while True:
            if self.owner.owns(partition):
                return None  # taken over meanwhile: apply it here
            try:
                reply = await self._nc.request(commands_partition_subject(partition), payload,
                                               timeout=REQUEST_TIMEOUT_S)
                return _response_decoder.decode(reply.data)
            except NoRespondersError:
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(RETRY_INTERVAL_S)
            except NatsTimeoutError:
                # The owner took it and did not answer in time: it may have applied it, so
                # it is not applied here too; the client retries with its Idempotency-Key.
                return ForwardedResponse(504, [(b"content-type", b"application/problem+json")],
                                         _GATEWAY_TIMEOUT)

    # -- the owner ------------------------------------------------------------------------------

    async def add_partition(self, partition: int) -> None:
        if self._nc is None or partition in self._subscriptions:
            return
        self._subscriptions[partition] = await self._nc.subscribe(
            commands_partition_subject(partition), queue=COMMANDS_QUEUE_GROUP, cb=self._on_command)

    async def remove_partition(self, partition: int) -> None:
        subscription = self._subscriptions.pop(partition, None)
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.drain()

    async def stop(self) -> None:
        for partition in list(self._subscriptions):
            await self.remove_partition(partition)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_command(self, msg: Msg) -> None:
        # nats-py awaits callbacks one at a time: each command runs as its own task.
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        try:
            request = _request_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("unreadable forwarded command dropped")
            return
        assert self._outer is not None
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": request.method, "scheme": "http",
            "path": request.path, "raw_path": request.path.encode(),
            "query_string": request.query_string, "root_path": "",
            "headers": [*request.headers,
                        (b"content-length", str(len(request.body)).encode())],
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {},
        }
        response = await _captured(self._outer, scope, request.body)
        if self.owner is not None:  # which process applied it, for the operator's eyes
            response.headers.append((APPLIED_BY_HEADER, self.owner.table.member.encode()))
        with contextlib.suppress(Exception):
            await msg.respond(_encoder.encode(response))


def _request_for(scope: Scope, body: bytes) -> ForwardedRequest:
    """The request as its owner will run it: marked forwarded, with this request's ids."""
    headers = [(name, value) for name, value in scope.get("headers", ())
               if name.lower() not in _DROPPED_HEADERS and name.lower() != b"x-request-id"
               and name.lower() != b"x-correlation-id"]
    headers += [(FORWARDED_HEADER, b"1"),
                (b"x-request-id", (current_request_id() or "").encode()),
                (b"x-correlation-id", (current_correlation_id() or "").encode())]
    return ForwardedRequest(method=scope["method"], path=scope["path"],
                            query_string=scope.get("query_string", b""), headers=headers,
                            body=body)


async def _captured(app: ASGIApp, scope: Scope, body: bytes) -> ForwardedResponse:
    """Run `app` on the request and keep its response instead of sending it."""
    status, headers, chunks = 500, [], []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    try:
        await app(scope, _replay(body), capture)
    except Exception:
        log.exception("forwarded command failed", path=scope.get("path"))
        return ForwardedResponse(500, [(b"content-type", b"application/problem+json")],
                                 _SERVER_ERROR)
    return ForwardedResponse(status, headers, b"".join(chunks))


_GATEWAY_TIMEOUT: Final = (b'{"type":"https://billing.example/problems/owner-timeout",'
                           b'"title":"The account\'s ledger process did not answer in time",'
                           b'"status":504,"detail":"retry with the same Idempotency-Key"}')
_NO_OWNER: Final = (b'{"type":"https://billing.example/problems/owner-unavailable",'
                    b'"title":"No ledger process serves the account\'s database just now",'
                    b'"status":503,"detail":"its partition is between owners: retry"}')
_SERVER_ERROR: Final = (b'{"type":"about:blank","title":"Internal Server Error",'
                        b'"status":500}')


def _forwarded(scope: Scope) -> bool:
    return any(name == FORWARDED_HEADER for name, _ in scope.get("headers", ()))


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes: the caller is in-process
        raise AssertionError("unreachable")

    return receive


async def _answer(send: Send, response: ForwardedResponse) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": [h for h in response.headers if h[0].lower() not in _STAMPED_HEADERS]
                + [(b"content-length", str(len(response.body)).encode())]})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
