"""One validated settings object per service, read once from the environment at start-up.

Nothing else in the code base reads ``os.environ``: a service receives its settings object,
and a bad or missing value stops the start with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypeVar, overload

import msgspec

from services.fault_points import FaultPoint
from services.http.auth import DEVELOPMENT_JWT_SECRET

AppEnv = Literal["development", "production"]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the environment variable."""


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every service shares. Field NAME is read from the variable NAME upper-cased."""

    service_name: str
    app_env: AppEnv = "development"
    http_host: str = "127.0.0.1"
    http_port: Port
    # Several processes of a service may share one port (SO_REUSEPORT; the kernel spreads
    # connections among them), to serve more requests than one Python process can.
    http_reuse_port: bool = False
    database_url: Annotated[str, msgspec.Meta(min_length=1)]
    # A streaming replica of DATABASE_URL for portal reads (services/read_replica.py); unset:
    # every read from DATABASE_URL.
    database_read_url: str | None = None
    # Reads that answer "as of the replica's position" (statement, usage, lists) go to the
    # primary while the replica is further behind than this.
    database_read_lag_max_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    nats_url: Annotated[str, msgspec.Meta(min_length=1)]
    jwt_secret: str = DEVELOPMENT_JWT_SECRET
    jwt_jwks_url: str | None = None
    # Signs and verifies the services' calls to each other (HS256), beside JWKS in production.
    jwt_service_secret: str | None = None
    jwt_audience: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    db_pool_size_max: Annotated[int, msgspec.Meta(ge=2, le=200)] = 10
    # 3 (or 5) in a NATS cluster, so a node can fail without losing an acknowledged message.
    nats_stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # Multiplies every stream's max_bytes (services/broker.py STREAM_LIMITS).
    nats_stream_bytes_scale: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    shutdown_grace_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 10.0
    # For the fault tests only (`make faults`): the process exits at this point of its code
    # (services/fault_points.py). Production refuses it.
    fault_inject: FaultPoint | None = None

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    def require_production_secrets(self) -> None:
        """Refuse short secrets anywhere, and development defaults in production."""
        if self.jwt_jwks_url is None and len(self.jwt_secret) < 32:
            raise SettingsError("JWT_SECRET must be at least 32 characters")
        if self.jwt_service_secret is not None and len(self.jwt_service_secret) < 32:
            raise SettingsError("JWT_SERVICE_SECRET must be at least 32 characters")
        if not self.is_production:
            return
        if self.fault_inject is not None:
            raise SettingsError("FAULT_INJECT makes the process exit on purpose, for the fault"
                                " tests; APP_ENV=production refuses it")
        if self.jwt_jwks_url is None and self.jwt_secret == DEVELOPMENT_JWT_SECRET:
            raise SettingsError(
                "APP_ENV=production needs JWT_JWKS_URL or a JWT_SECRET of its own; "
                "the development default is refused"
            )
        if self.jwt_service_secret == DEVELOPMENT_JWT_SECRET:
            raise SettingsError("APP_ENV=production refuses the development JWT_SERVICE_SECRET")

    def resolved(self) -> Self:
        """The settings as the process uses them, once validated: a service may derive
        values from others here (the ledger's database group picks its DATABASE_URL)."""
        return self

    @property
    def service_token_secret(self) -> str:
        """What this service signs its calls to the other services with."""
        return self.jwt_service_secret or self.jwt_secret


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

StructT = TypeVar("StructT", bound=msgspec.Struct)


def read_environment(cls: type[StructT], environ: Mapping[str, str] | None, *,
                     prefix: str | None = None, preset: Mapping[str, Any] | None = None,
                     skip: frozenset[str] = frozenset()) -> StructT:
    """The one settings reader: each field of `cls` from the variable NAME upper-cased, with
    `<PREFIX>NAME` winning where a prefix is given (LEDGER_HTTP_PORT over HTTP_PORT); empty
    variables count as unset. A bad or missing value raises SettingsError naming the variable.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = dict(preset or {})
    for field in msgspec.structs.fields(cls):
        if field.name in skip:
            continue
        names = (prefix + field.name.upper(), field.name.upper()) if prefix else (field.name.upper(),)
        for key in names:
            if env.get(key):
                raw[field.name] = env[key]
                break
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc, prefix or "")) from None


def service_prefix(service_name: str) -> str:
    return service_name.upper().removesuffix("_SERVICE") + "_"


def load_settings(
    cls: type[SettingsT],
    *,
    service_name: str,
    http_port_default: int,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Build ``cls`` from environment variables (field name upper-cased).

    Per-service variables such as ``LEDGER_HTTP_PORT`` win over the plain ``HTTP_PORT`` so
    that one shell can start all four services.
    """
    settings = read_environment(
        cls, environ, prefix=service_prefix(service_name), skip=frozenset({"service_name"}),
        preset={"service_name": service_name, "http_port": http_port_default})
    settings.require_production_secrets()
    return settings.resolved()


def _explain(exc: msgspec.ValidationError, prefix: str) -> str:
    # msgspec says "Object missing required field `nats_url`" or "... - at `$.http_port`".
    message = str(exc)
    for token in ("`$.", "`"):
        if token in message:
            name = message.split(token, 1)[1].split("`", 1)[0]
            if name.isidentifier():
                var = name.upper()
                also = f" (or {prefix}{var})" if prefix else ""
                return f"setting {var}{also} is invalid or missing: {message}"
    return f"invalid settings: {message}"


class StackSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``make run`` (the stack runner), not of any one service."""

    database_url: str | None = None
    nats_url: str | None = None
    run_dir: str = ".run"
    http_host: str = "127.0.0.1"
    ready_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 90.0
    log_format: Literal["auto", "json", "console"] = "auto"
    # CLUSTER=3 (or 5): the embedded NATS as a JetStream cluster of that many nodes.
    cluster: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # LEDGER_PROCESSES=2 (up to 8): that many ledger processes on ports 8001, 8011, ...,
    # splitting the account partitions (LEDGER_PARTITIONS) among them (docs/scaling.md).
    ledger_processes: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    # LEDGER_GROUPS=2 (up to 8): the ledger's partitions split among that many databases on
    # the stack's PostgreSQL (LEDGER_DATABASES; the first is DATABASE_URL's, the others
    # <database>_ledger_g<n>), LEDGER_PROCESSES ledger processes for each.
    ledger_groups: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    # A crashed service is restarted after restart_delay_initial_s, doubling per crash up to
    # restart_delay_max_s; a service that stayed up restart_stable_s has its back-off reset;
    # after restart_fast_crashes_max crashes in a row, each within restart_stable_s of its
    # start, the runner gives up and stops the stack (services/runner.py, RestartPolicy).
    restart_delay_initial_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    restart_delay_max_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    restart_stable_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    restart_fast_crashes_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8


def load_stack_settings(environ: Mapping[str, str] | None = None) -> StackSettings:
    return read_environment(StackSettings, environ)


def passthrough_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the runner hands to each service process it starts."""
    return dict(os.environ if environ is None else environ)


class ToolSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of an operator tool (``ledgerctl``): where the servers are, nothing else.

    Unlike a service, a tool may run with only one of the two (``verify`` needs PostgreSQL,
    ``dead-letters`` needs NATS), so each is optional here and required by the command that
    uses it. Without DATABASE_URL the tool looks for the embedded server of ``make run`` under
    RUN_DIR.
    """

    database_url: str | None = None
    nats_url: str | None = None
    run_dir: str = ".run"


ToolSettingsT = TypeVar("ToolSettingsT", bound=ToolSettings)


@overload
def load_tool_settings(service_name: str, environ: Mapping[str, str] | None = None) -> ToolSettings: ...


@overload
def load_tool_settings(service_name: str, environ: Mapping[str, str] | None = None, *,
                       cls: type[ToolSettingsT]) -> ToolSettingsT: ...


def load_tool_settings(service_name: str, environ: Mapping[str, str] | None = None,
                       cls: type[Any] = ToolSettings) -> Any:
    """Read ToolSettings (or a tool's subclass of it); ``LEDGER_DATABASE_URL`` wins over
    ``DATABASE_URL`` as for services."""
    return read_environment(cls, environ, prefix=service_prefix(service_name))
