"""The sidecar's configuration: one table of options, parsed from flags and ``SG_`` variables.

The operator writes environment variables into the Deployment it generates and the
sidecar reads them back; a single table (:data:`OPTIONS`) is the contract between
the two. Flags win over the environment, so a person debugging a sidecar by hand
can override one value without rewriting the others.

Settings are grouped in one frozen dataclass per concern, in the style of kopf's
settings: each field documents what it changes. Every option is validated at
start-up, and the first bad one stops the process with a single line naming the
flag, the variable and what was wrong, never the value of a secret.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

from streamgroup_core.addresses import DEFAULT_URL, MODES, check_url
from streamgroup_core.deadletters import DEFAULT_TEMPLATE, InvalidTemplate, check_template
from streamgroup_core.durations import parse_duration
from streamgroup_core.ids import InvalidEntryID, start_position

ENV_PREFIX = "SG_"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the option."""


# --- value parsers ------------------------------------------------------------------------

def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _non_negative_duration(text: str) -> float:
    value = parse_duration(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def _float_between(low: float, high: float | None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if value != value or value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _string(text: str) -> str:
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _stream_list(text: str) -> tuple[str, ...]:
    streams = tuple(s.strip() for s in text.split(",") if s.strip())
    if not streams:
        raise ValueError("give at least one stream key")
    if len(set(streams)) != len(streams):
        raise ValueError("lists a stream twice")
    return streams


def _http_url(text: str) -> str:
    try:
        parts = urlsplit(text.strip())
    except ValueError:  # its message shows the host part, password included
        raise ValueError("is not a URL (a bracket or a character that cannot be in a host)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return text.strip()


def _optional_http_url(text: str) -> str | None:
    return _http_url(text) if text.strip() else None


def _status_set(text: str) -> frozenset[int]:
    statuses: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 400 <= int(part) <= 599:
            raise ValueError(f"{part!r} is not an HTTP error status (400-599)")
        statuses.add(int(part))
    return frozenset(statuses)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _start_from(text: str) -> str:
    try:
        return start_position(text)
    except InvalidEntryID as exc:
        raise ValueError(f"{exc}; use $, 0, an entry ID or an ISO-8601 timestamp") from None


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise ValueError("must be a TCP port (0-65535)")
    return value


def _dead_letter_template(text: str) -> str:
    try:
        return check_template(text)
    except InvalidTemplate as exc:
        raise ValueError(str(exc)) from None


def _default_consumer(environ: Mapping[str, str]) -> str:
    name = environ.get("HOSTNAME") or socket.gethostname()
    if not _is_utf8(name):
        raise ConfigError("--consumer / SG_CONSUMER is required: the host name is not UTF-8 text")
    return name


def _is_utf8(text: str) -> bool:
    """Whether ``text`` is text: the system hands bytes that are not UTF-8 over as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _without_userinfo(text: str) -> str:
    """``text`` with whatever a URL has between ``//`` and its last ``@`` (user, password) masked."""
    head, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    # The last @: a password may hold /, ? or # unescaped, and then no URL parser finds where it ends.
    return f"{head}://***@{rest.rpartition('@')[2]}"


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisSettings:
    """Where the stream lives and how to authenticate."""

    url: str = DEFAULT_URL
    """``redis://`` or ``rediss://`` (TLS) URL; may carry user, password and db."""
    username: str | None = None
    """ACL user name; overrides the one in the URL."""
    password: str | None = field(default=None, repr=False)
    """Password; read from the environment only, so it never shows in ``ps``."""
    tls_ca_file: str | None = None
    """PEM bundle of CAs that sign the server's certificate (``rediss://`` only)."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS."""
    tls_key_file: str | None = None
    """Key of the client certificate."""
    tls_server_name: str | None = None
    """Name to verify the server certificate against (and send as SNI) when it differs from the host."""
    mode: str = "standalone"
    """``standalone``, ``cluster`` (the URL lists seed nodes) or ``sentinel`` (the URL lists sentinels)."""
    sentinel_master: str | None = None
    """Sentinel mode: the name the sentinels know the primary by."""
    sentinel_username: str | None = None
    """Sentinel mode: the ACL user on the sentinels, when they have their own."""
    sentinel_password: str | None = field(default=None, repr=False)
    """Sentinel mode: the sentinels' password; environment only."""


@dataclass(frozen=True)
class GroupSettings:
    """Which consumer group this sidecar belongs to."""

    streams: tuple[str, ...] = ()
    """Stream keys read by the group; the group is created on each of them."""
    group: str = ""
    """Consumer group name."""
    consumer: str = ""
    """This sidecar's consumer name; the pod name keeps it stable across restarts of a pod."""
    start_from: str = "$"
    """Where a group that does not exist yet starts. An existing group is never moved."""
    on_loss: str = "recreate"
    """When the group or stream is deleted while running: ``recreate`` it at :attr:`start_from`, or ``exit``."""


@dataclass(frozen=True)
class DeliverySettings:
    """How entries become HTTP requests, and what the replies mean."""

    app_url: str = "http://127.0.0.1:8080/"
    """The application's endpoint; every entry is POSTed here."""
    app_health_url: str | None = None
    """Probed every :attr:`app_health_interval`, up or down; when set, it alone says whether the app is up,
    and while it does not answer 2xx nothing is read or attempted."""
    app_health_interval: float = 1.0
    """Seconds between two probes of :attr:`app_health_url`."""
    body: str = "json"
    """``json``: a JSON object of the entry's fields. ``raw``: the bytes of :attr:`body_field`."""
    body_field: str | None = None
    """With ``body=raw``, the field whose bytes are the request body."""
    content_type: str = "application/octet-stream"
    """With ``body=raw``, the Content-Type sent."""
    max_in_flight: int = 32
    """Entries delivered at once, and the most this sidecar holds in memory."""
    request_timeout: float = 30.0
    """Seconds before one HTTP attempt counts as failed and is retried."""
    max_deliveries: int = 10
    """Attempts before an entry is dead-lettered; 0 means retry for ever."""
    dead_letter_statuses: frozenset[int] = frozenset({400, 413, 415, 422})
    """HTTP statuses meaning "this entry can never succeed": dead-lettered at once."""
    dead_letter_stream: str = DEFAULT_TEMPLATE
    """Where dead letters go: a template (:mod:`streamgroup_core.deadletters`) with ``{stream}``."""
    cloudevents_type: str = "io.streamgroup.entry"
    """The ``ce-type`` header."""
    ordering_field: str | None = None
    """Entries with the same value of this field (per stream) are delivered one at a time, in order."""
    http_client: str = "builtin"
    """``builtin`` (the sidecar's own HTTP/1.1 client, fastest measured), ``pyreqwest`` or ``aiohttp``."""
    batch_size: int = 1
    """Entries per request: 1 posts each entry on its own; more posts JSON arrays (batch mode)."""
    batch_wait: float = 0.005
    """In batch mode, how long a request waits for more entries before it leaves partly filled, seconds."""
    protocol: str = "streamgroup"
    """What the app speaks: ``streamgroup`` (this project's requests and reply contract) or ``dapr`` (a Dapr
    pub/sub subscriber: :mod:`streamgroup_sidecar.dapr`)."""
    dapr_pubsub: str | None = None
    """``dapr``: the pub/sub component name whose subscriptions are served; ``None``: the app's only one."""

    @property
    def app_watched(self) -> bool:
        """Whether something besides the deliveries says when the app is back (the health probe, or with
        ``dapr`` the subscriptions read again): then nothing is attempted while it is down."""
        return self.app_health_url is not None or self.protocol == "dapr"


@dataclass(frozen=True)
class ClaimSettings:
    """Recovery of entries that a crashed or stalled consumer left pending, and leases on our own."""

    min_idle: float = 30.0
    """An entry pending this long without its owner touching it is taken over (XAUTOCLAIM), seconds."""
    interval: float = 10.0
    """Time between two reclaim sweeps, seconds."""
    max_pages: int = 10
    """XAUTOCLAIM calls per sweep at most, so one sweep cannot monopolise the sidecar."""


@dataclass(frozen=True)
class RetrySettings:
    """Back-off between attempts of one entry: exponential, capped, jittered."""

    initial: float = 0.2
    """Delay after the first failure, seconds."""
    maximum: float = 30.0
    """Largest delay, seconds."""
    multiplier: float = 2.0
    """Growth of the delay after each failure."""
    jitter: float = 0.2
    """Random spread as a fraction of the delay (0.2 → ±20%), so peers do not retry in step."""
    retry_after_max: float = 600.0
    """Cap on a ``Retry-After`` the app asks for, seconds."""


@dataclass(frozen=True)
class ReadSettings:
    """How the read loop waits for new entries."""

    block: float = 2.0
    """Longest wait of one XREADGROUP for new entries, seconds."""


@dataclass(frozen=True)
class ServerSettings:
    """The health and metrics endpoint."""

    host: str = "0.0.0.0"
    """Address the health/metrics server binds."""
    port: int = 9400
    """Port of ``/healthz``, ``/readyz`` and ``/metrics``; 0 picks a free one."""
    stats_interval: float = 10.0
    """How often the group's lag and pending are read for ``/metrics``, seconds."""


@dataclass(frozen=True)
class ShutdownSettings:
    """What happens on SIGTERM."""

    grace: float = 25.0
    """Seconds to finish in-flight deliveries and flush acks before exiting."""


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    group: GroupSettings = field(default_factory=GroupSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    claim: ClaimSettings = field(default_factory=ClaimSettings)
    read: ReadSettings = field(default_factory=ReadSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    log_level: str = "info"


# --- the option table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting as users see it: a flag, an ``SG_`` variable, a default and a description."""

    name: str
    """Flag name without dashes; the variable is ``SG_`` + upper-case name with ``_``."""
    target: str
    """``section.field`` in :class:`Settings` (or just ``field`` for top-level ones)."""
    parse: Callable[[str], Any]
    default: str | None
    help: str
    required: bool = False
    secret: bool = False
    env_only: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name


OPTIONS: tuple[Option, ...] = (
    Option("redis-url", "redis.url", _non_empty, DEFAULT_URL,
           "Redis URL: `redis://` or `rediss://` (TLS), optional `user:password@`, db as the path. In cluster "
           "mode, seed nodes and in sentinel mode the sentinels, comma-separated: `redis://r-0:6379,r-1:6379`.",
           secret=True),
    Option("redis-username", "redis.username", _non_empty, None, "ACL user; overrides the URL's."),
    Option("redis-password", "redis.password", _string, None,
           "Password; environment only (mount it from a Secret). Overrides the URL's.",
           secret=True, env_only=True),
    Option("redis-tls-ca-file", "redis.tls_ca_file", _non_empty, None,
           "PEM file of CAs trusted for the server certificate (with `rediss://`)."),
    Option("redis-tls-cert-file", "redis.tls_cert_file", _non_empty, None,
           "Client certificate (PEM) for mutual TLS."),
    Option("redis-tls-key-file", "redis.tls_key_file", _non_empty, None, "Key of the client certificate."),
    Option("redis-mode", "redis.mode", _choice(*MODES), "standalone",
           "`standalone` (one server), `cluster` (Redis Cluster) or `sentinel` (a primary the sentinels watch)."),
    Option("redis-sentinel-master", "redis.sentinel_master", _non_empty, None,
           "Sentinel mode: the name the sentinels know the primary by."),
    Option("redis-sentinel-username", "redis.sentinel_username", _non_empty, None,
           "Sentinel mode: ACL user on the sentinels, when they have their own."),
    Option("redis-sentinel-password", "redis.sentinel_password", _string, None,
           "Sentinel mode: the sentinels' password, when they have one; environment only.",
           secret=True, env_only=True),
    Option("redis-tls-server-name", "redis.tls_server_name", _non_empty, None,
           "Name the server certificate must carry (and the SNI sent), when it is not the URL's host."),
    Option("streams", "group.streams", _stream_list, None,
           "Stream keys to read, comma-separated.", required=True),
    Option("group", "group.group", _non_empty, None, "Consumer group name.", required=True),
    Option("consumer", "group.consumer", _non_empty, None,
           "Consumer name in the group. Default: `$HOSTNAME` (the pod name), else the host name."),
    Option("start-from", "group.start_from", _start_from, "$",
           "Where a new group starts: `$` (new entries only), `0` (the whole stream), after an entry ID, "
           "or at an ISO-8601 timestamp with a zone. An existing group is never moved."),
    Option("on-group-loss", "group.on_loss", _choice("recreate", "exit"), "recreate",
           "If the group or stream is deleted while running: `recreate` it at `--start-from` (logged as an "
           "error, counted in metrics) or `exit` with status 3."),
    Option("app-url", "delivery.app_url", _http_url, "http://127.0.0.1:8080/",
           "The app endpoint each entry is POSTed to."),
    Option("app-health-url", "delivery.app_health_url", _optional_http_url, None,
           "Optional app health endpoint, probed every `--app-health-interval`: while it does not answer "
           "2xx, nothing is read or attempted. Without it, the app counts as down while its connections are "
           "refused (or TLS handshakes fail)."),
    Option("app-health-interval", "delivery.app_health_interval", _positive_duration, "1s",
           "Time between two probes of `--app-health-url` (whether the app is up or down)."),
    Option("body", "delivery.body", _choice("json", "raw"), "json",
           "`json`: a JSON object of the entry's fields. `raw`: the bytes of `--body-field` as they are."),
    Option("body-field", "delivery.body_field", _non_empty, None,
           "With `--body raw`: the field carrying the payload. Entries without it are dead-lettered."),
    Option("content-type", "delivery.content_type", _non_empty, "application/octet-stream",
           "With `--body raw`: the Content-Type of the requests."),
    Option("max-in-flight", "delivery.max_in_flight", _int_at_least(1), "32",
           "Entries delivered concurrently; also the most entries held in memory."),
    Option("request-timeout", "delivery.request_timeout", _positive_duration, "30s",
           "Time limit of one HTTP attempt."),
    Option("max-deliveries", "delivery.max_deliveries", _int_at_least(0), "10",
           "Attempts before an entry is dead-lettered (`0`: never give up)."),
    Option("dead-letter-statuses", "delivery.dead_letter_statuses", _status_set, "400,413,415,422",
           "HTTP statuses meaning the entry can never succeed: dead-lettered without retry. Empty: none."),
    Option("dead-letter-stream", "delivery.dead_letter_stream", _dead_letter_template, DEFAULT_TEMPLATE,
           "Dead-letter stream key; `{stream}` is replaced by the source stream, every other character is "
           "the key's own (`{{stream}}:dead` is the hash tag `{orders}:dead`)."),
    Option("cloudevents-type", "delivery.cloudevents_type", _non_empty, "io.streamgroup.entry",
           "Value of the `ce-type` header."),
    Option("http-client", "delivery.http_client", _choice("builtin", "pyreqwest", "aiohttp"), "builtin",
           "HTTP client: `builtin` (keep-alive HTTP/1.1 on the event loop, the least CPU per entry measured, "
           "see docs/performance.md), `pyreqwest` (Rust's reqwest) or `aiohttp`: general-purpose clients, for an "
           "app the built-in one has trouble with. All three meet one delivery contract."),
    Option("batch-size", "delivery.batch_size", _int_at_least(1), "1",
           "Entries per request. 1: one POST per entry. More: batch mode, a JSON array of up to this many "
           "entries per POST, each acknowledged, retried or dead-lettered on its own (see Batch mode)."),
    Option("batch-wait", "delivery.batch_wait", _non_negative_duration, "5ms",
           "Batch mode: the longest a request waits for more entries before it is sent partly filled."),
    Option("app-protocol", "delivery.protocol", _choice("streamgroup", "dapr"), "streamgroup",
           "What the app speaks. `streamgroup`: the requests and replies of this README. `dapr`: a Dapr pub/sub "
           "subscriber, unmodified: its subscriptions are read from `/dapr/subscribe` on the origin of `--app-url`, "
           "each entry's CloudEvent is posted to its subscription's route and Dapr's replies are honoured "
           "(docs/dapr.md)."),
    Option("dapr-pubsub", "delivery.dapr_pubsub", _non_empty, None,
           "With `--app-protocol dapr`: the pub/sub component name (`pubsubname`) whose subscriptions this group "
           "serves. Default: the only one the app's subscriptions name."),
    Option("ordering-field", "delivery.ordering_field", _non_empty, None,
           "Entries with the same value of this field (per stream) are delivered one at a time, in stream "
           "order; a failing entry holds its key back. Other keys go in parallel."),
    Option("claim-min-idle", "claim.min_idle", _positive_duration, "30s",
           "Entries pending longer than this without their owner touching them are taken over (XAUTOCLAIM). "
           "Entries this sidecar holds are leased, so a slow delivery is never stolen."),
    Option("claim-interval", "claim.interval", _positive_duration, "10s", "Time between two reclaim sweeps."),
    Option("claim-max-pages", "claim.max_pages", _int_at_least(1), "10",
           "XAUTOCLAIM calls per sweep at most (each takes at most the free delivery slots)."),
    Option("retry-initial", "retry.initial", _positive_duration, "200ms", "Back-off after the first failure."),
    Option("retry-max", "retry.maximum", _positive_duration, "30s", "Longest back-off."),
    Option("retry-multiplier", "retry.multiplier", _float_between(1.0, None), "2",
           "Back-off growth per failure (≥ 1)."),
    Option("retry-jitter", "retry.jitter", _float_between(0.0, 1.0), "0.2",
           "Random spread of each back-off, as a fraction (0 to 1)."),
    Option("retry-after-max", "retry.retry_after_max", _non_negative_duration, "10m",
           "Cap on the delay a `Retry-After` reply may ask for."),
    Option("read-block", "read.block", _positive_duration, "2s",
           "Longest wait of one XREADGROUP for new entries."),
    Option("health-host", "server.host", _non_empty, "0.0.0.0", "Address of the health/metrics server."),
    Option("health-port", "server.port", _port, "9400",
           "Port of `/healthz`, `/readyz` and `/metrics` (0: any free port)."),
    Option("stats-interval", "server.stats_interval", _positive_duration, "10s",
           "How often the group's lag and pending are refreshed for `/metrics`."),
    Option("shutdown-grace", "shutdown.grace", _positive_duration, "25s",
           "Time allowed on SIGTERM to finish in-flight deliveries and flush acks."),
    Option("log-level", "log_level", _choice("debug", "info", "warning", "error"), "info", "Log level."),
)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints its usage text and the arguments it could not place, a password among them maybe;
        # parse_settings says what is wrong itself, this is for anything it does not foresee.
        raise ConfigError("invalid command line: options are --name VALUE or --name=VALUE (see --help)")


def _arg_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="streamgroup-sidecar",
        description="Deliver a Redis consumer group to an HTTP app. "
        f"Every flag also reads from an environment variable ({ENV_PREFIX}NAME); flags win.",
        # No abbreviations: a new option would silently change what one means, and argparse's
        # message for an ambiguous one shows the value given with it.
        allow_abbrev=False,
        exit_on_error=False,
    )
    for option in OPTIONS:
        if option.env_only:
            continue
        default = f" (default: {option.default})" if option.default is not None else ""
        parser.add_argument(option.flag, dest=option.name, default=None,
                            help=f"{option.help.replace('%', '%%')} [{option.env}]{default}")
    return parser


_FLAG_LIKE = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]{0,40}")


def _stray_argument(argv: Sequence[str]) -> str:
    """The error line for the first argument that is neither a flag nor a flag's value.

    Never the argument itself unless it looks like a flag: it may be a password typed on the command line.
    """
    flags = {option.flag: option for option in OPTIONS}
    index, after = 0, None
    while index < len(argv):
        name, has_value, _ = argv[index].partition("=")
        option = flags.get(name)
        if option is None or option.env_only:
            break
        index, after = index + (1 if has_value else 2), name
    name = argv[index].partition("=")[0] if index < len(argv) else ""
    if name in flags:  # an environment-only option
        return (f"{name} is no flag: set {flags[name].env} instead (the environment only, so that the password "
                "never shows in the process list)")
    if _FLAG_LIKE.fullmatch(name):
        return f"unknown option {name} (see --help)"
    where = f", after the value of {after}" if after else ""
    return f"unexpected argument {index + 1}{where}: options are --name VALUE or --name=VALUE (see --help)"


def _parse_flags(argv: Sequence[str]) -> dict[str, str | None]:
    try:
        namespace, extras = _arg_parser().parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        problem = "needs a value" if "expected" in exc.message else "takes no value"
        raise ConfigError(f"{exc.argument_name} {problem}: --name VALUE or --name=VALUE (see --help)") from None
    if extras:
        raise ConfigError(_stray_argument(argv))
    return vars(namespace)


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from flags and environment; raise :class:`ConfigError` on the first bad value."""
    environ = os.environ if environ is None else environ
    args = _parse_flags(argv or [])

    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for option in OPTIONS:
        raw: str | None = args.get(option.name)
        source = option.flag
        if raw is None:
            raw, source = environ.get(option.env), option.env
        if raw is None:
            raw, source = option.default, "default"
        if raw is None:
            if option.required:
                raise ConfigError(f"{option.flag} / {option.env} is required: {option.help}")
            continue
        if not _is_utf8(raw):
            raise ConfigError(f"invalid {option.flag} / {option.env} (from {source}): not UTF-8 text")
        try:
            value = option.parse(raw)
        except ValueError as exc:
            shown = "" if option.secret else f"={_without_userinfo(raw)!r}"
            raise ConfigError(f"invalid {option.flag} / {option.env} (from {source}{shown}): {exc}") from None
        section, _, name = option.target.rpartition(".")
        (sections.setdefault(section, {}) if section else top)[name] = value

    group = sections.setdefault("group", {})
    group.setdefault("consumer", _default_consumer(environ))
    delivery = sections.get("delivery", {})
    if delivery.get("body") == "raw" and not delivery.get("body_field"):
        raise ConfigError("--body-field / SG_BODY_FIELD is required when --body is raw")
    if delivery.get("batch_size", 1) > 1 and delivery.get("body") == "raw":
        raise ConfigError("--batch-size / SG_BATCH_SIZE above 1 needs --body json (a batch is a JSON array)")
    if delivery.get("protocol") == "dapr" and delivery.get("body") == "raw":
        raise ConfigError("--body raw is for --app-protocol streamgroup: a Dapr app receives CloudEvents")
    if delivery.get("dapr_pubsub") is not None and delivery.get("protocol") != "dapr":
        raise ConfigError("--dapr-pubsub / SG_DAPR_PUBSUB is for --app-protocol dapr")
    if delivery.get("batch_size", 1) > delivery.get("max_in_flight", 32):
        raise ConfigError("invalid --batch-size / SG_BATCH_SIZE: larger than --max-in-flight")
    retry = sections.get("retry", {})
    if retry.get("initial", 0) > retry.get("maximum", float("inf")):
        raise ConfigError("invalid --retry-initial / SG_RETRY_INITIAL: larger than --retry-max")
    redis = sections.setdefault("redis", {})
    mode = redis.get("mode", "standalone")
    try:
        redis["url"] = check_url(redis.get("url", DEFAULT_URL), mode)
    except ValueError as exc:
        raise ConfigError(f"invalid --redis-url / SG_REDIS_URL: {exc}") from None
    sentinel_options = [name for name in ("sentinel_master", "sentinel_username", "sentinel_password")
                        if redis.get(name) is not None]
    if mode == "sentinel" and "sentinel_master" not in sentinel_options:
        raise ConfigError("--redis-sentinel-master / SG_REDIS_SENTINEL_MASTER is required with --redis-mode sentinel")
    if mode != "sentinel" and sentinel_options:
        raise ConfigError(f"--redis-{sentinel_options[0].replace('_', '-')} is for --redis-mode sentinel only")
    if (redis.get("tls_cert_file") is None) != (redis.get("tls_key_file") is None):
        raise ConfigError("--redis-tls-cert-file and --redis-tls-key-file go together")
    tls_options = [name for name in ("tls_ca_file", "tls_cert_file", "tls_server_name") if redis.get(name)]
    if tls_options and not str(redis.get("url", "")).startswith("rediss://"):
        raise ConfigError(f"--redis-{tls_options[0].replace('_', '-')}: --redis-tls-* options need a rediss:// "
                          "--redis-url / SG_REDIS_URL")

    return Settings(
        redis=RedisSettings(**sections.get("redis", {})),
        group=GroupSettings(**group),
        delivery=DeliverySettings(**delivery),
        retry=RetrySettings(**retry),
        claim=ClaimSettings(**sections.get("claim", {})),
        read=ReadSettings(**sections.get("read", {})),
        server=ServerSettings(**sections.get("server", {})),
        shutdown=ShutdownSettings(**sections.get("shutdown", {})),
        **top,
    )


def options_markdown() -> str:
    """The README's option table, generated from :data:`OPTIONS` (a test keeps them equal)."""
    lines = ["| Flag | Environment | Default | Meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        flag = "—" if option.env_only else f"`{option.flag}`"
        if option.required:
            default = "required"
        elif option.default is None:
            default = "—"
        else:
            default = f"`{option.default}`"
        lines.append(f"| {flag} | `{option.env}` | {default} | {option.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - used by hack/ to regenerate the README table
    print(options_markdown(), end="")
