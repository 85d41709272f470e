"""The StreamGroup's spec as typed, frozen dataclasses, parsed once from the custom resource.

Every default lives here, once: the operator builds the sidecar's environment from these objects,
the CLI reads the streams and dead-letter template from them, and a test checks each default
against the one the CRD's schema declares (the API server fills those in, so they must agree).

Parsing is by field metadata: each field's JSON name is its camelCase name unless the field says
otherwise, nested dataclasses are parsed recursively, and a value of the wrong type is a
:class:`SpecError` naming its path (``spec.delivery.maxInFlight``). The API server has already
validated the resource against the schema; these checks catch what CEL cannot (the dead-letter
template's syntax, durations) and resources that reach the CLI from elsewhere.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .addresses import MODES, check_url, url_for
from .connecting import Endpoint, Pem, Sentinels, Tls
from .deadletters import DEFAULT_TEMPLATE, InvalidTemplate, check_template, dead_letter_key_for
from .durations import InvalidDuration, parse_duration
from .ids import InvalidEntryID, start_position
from .partitions import keyslot, partition_keys

API_GROUP = "streamgroup.io"
API_VERSION = "v1alpha1"
PLURAL = "streamgroups"
KIND = "StreamGroup"


class SpecError(ValueError):
    """A StreamGroup whose spec cannot be used; the message names the field."""


class SecretMissing(LookupError):
    """A Secret or key the StreamGroup refers to does not exist (the message names it, never a value)."""


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordSecretRef:
    name: str
    key: str = "password"


@dataclass(frozen=True)
class CaSecretRef:
    name: str
    key: str = "ca.crt"


@dataclass(frozen=True)
class ClientCertSecretRef:
    """A ``kubernetes.io/tls`` Secret: the certificate in ``tls.crt``, its key in ``tls.key``."""

    name: str


@dataclass(frozen=True)
class SentinelSpec:
    master_name: str
    username: str | None = None
    password_secret_ref: PasswordSecretRef | None = None


@dataclass(frozen=True)
class Credentials:
    """Another ACL user on the data nodes (``spec.redis.operatorCredentials``)."""

    username: str
    password_secret_ref: PasswordSecretRef | None = None


@dataclass(frozen=True)
class TlsSpec:
    enabled: bool = False
    ca_secret_ref: CaSecretRef | None = None
    server_name: str | None = None
    client_cert_secret_ref: ClientCertSecretRef | None = None


@dataclass(frozen=True)
class RedisSpec:
    url: str | None = None
    host: str | None = None
    port: int = 6379
    db: int = 0
    username: str | None = None
    password_secret_ref: PasswordSecretRef | None = None
    tls: TlsSpec = field(default_factory=TlsSpec)
    mode: str = "standalone"
    sentinel: SentinelSpec | None = None
    operator_credentials: Credentials | None = None
    """The operator's own user, when it is not the sidecar's (least privilege: `streamgroup acl`)."""

    @property
    def address(self) -> str:
        """The URL the sidecar and the operator connect to (never with a password in it)."""
        if self.url is not None:
            if self.tls.enabled and self.url.startswith("redis://"):
                return "rediss://" + self.url[len("redis://"):]
            return self.url
        assert self.host is not None
        return url_for(self.host, self.port, self.db, tls=self.tls.enabled)

    def secret_names(self) -> list[str]:
        """The Secrets (in the StreamGroup's namespace) that :meth:`endpoint` reads, each once."""
        sentinel = self.sentinel.password_secret_ref if self.sentinel is not None else None
        operator = self.operator_credentials.password_secret_ref if self.operator_credentials is not None else None
        refs = [self.password_secret_ref, self.tls.ca_secret_ref, self.tls.client_cert_secret_ref, sentinel, operator]
        return list(dict.fromkeys(ref.name for ref in refs if ref is not None))

    def endpoint(self, namespace: str, secrets: Mapping[str, Mapping[str, bytes] | None],
                 operator: bool = False) -> Endpoint:
        """How to reach this Redis, with the values of the Secrets it names.

        ``secrets`` maps each name of :meth:`secret_names` to the Secret's decoded data, or to
        ``None`` when it does not exist (:class:`SecretMissing`). ``operator``: as the operator, with
        :attr:`operator_credentials` when they are given (else as the sidecar).
        """

        def value(name: str, key: str) -> bytes:
            data = secrets.get(name)
            if data is None:
                raise SecretMissing(f"Secret {namespace}/{name} not found")
            if key not in data:
                raise SecretMissing(f"Secret {namespace}/{name} has no key {key!r}")
            return data[key]

        password = None
        username, password_ref = self.username, self.password_secret_ref
        if operator and self.operator_credentials is not None:
            username, password_ref = self.operator_credentials.username, self.operator_credentials.password_secret_ref
        if (ref := password_ref) is not None:
            try:
                password = value(ref.name, ref.key).decode("utf-8")
            except UnicodeDecodeError:
                raise SpecError(f"Secret {namespace}/{ref.name} key {ref.key!r} is not UTF-8 text") from None
        ca = cert = private_key = None
        if (tls_ca := self.tls.ca_secret_ref) is not None:
            ca = Pem(data=value(tls_ca.name, tls_ca.key))
        if (client := self.tls.client_cert_secret_ref) is not None:
            cert, private_key = Pem(data=value(client.name, "tls.crt")), Pem(data=value(client.name, "tls.key"))
        tls = Tls(ca=ca, cert=cert, key=private_key, server_name=self.tls.server_name)
        sentinels = None
        if self.sentinel is not None:
            sentinel_password = None
            if (ref := self.sentinel.password_secret_ref) is not None:
                try:
                    sentinel_password = value(ref.name, ref.key).decode("utf-8")
                except UnicodeDecodeError:
                    raise SpecError(f"Secret {namespace}/{ref.name} key {ref.key!r} is not UTF-8 text") from None
            sentinels = Sentinels(self.sentinel.master_name, username=self.sentinel.username,
                                  password=sentinel_password)
        return Endpoint(self.address, username=username, password=password, tls=tls, mode=self.mode,
                        sentinels=sentinels)


@dataclass(frozen=True)
class SidecarSpec:
    image: str | None = None
    image_pull_policy: str | None = None
    resources: dict[str, Any] | None = None
    log_level: str = "info"
    http_client: str | None = None
    """Written to the sidecar only when set, so Deployments of StreamGroups without it do not roll."""


@dataclass(frozen=True)
class BatchSpec:
    size: int
    max_wait: str = "5ms"


@dataclass(frozen=True)
class RetrySpec:
    initial: str = "200ms"
    max: str = "30s"
    multiplier: float = 2
    jitter: float = 0.2


@dataclass(frozen=True)
class DeliverySpec:
    port: int = 8080
    path: str = "/"
    health_path: str | None = None
    protocol: str = "streamgroup"
    dapr_pubsub: str | None = None
    body: str = "json"
    body_field: str | None = None
    content_type: str | None = None
    max_in_flight: int = 32
    batch: BatchSpec | None = None
    timeout: str = "30s"
    max_deliveries: int = 10
    dead_letter_stream: str = DEFAULT_TEMPLATE
    dead_letter_statuses: tuple[int, ...] | None = None
    ordering_field: str | None = None
    retry: RetrySpec = field(default_factory=RetrySpec)


@dataclass(frozen=True)
class ClaimSpec:
    min_idle: str = "30s"
    interval: str = "10s"

    @property
    def min_idle_seconds(self) -> float:
        return parse_duration(self.min_idle)


@dataclass(frozen=True)
class AutoscalingSpec:
    max_replicas: int
    min_replicas: int = 1
    target_lag_per_replica: int = 100
    target_pending_per_replica: int | None = None
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300


@dataclass(frozen=True)
class PartitionedStream:
    name: str
    partitions: int

    @property
    def keys(self) -> list[str]:
        return partition_keys(self.name, self.partitions)


@dataclass(frozen=True)
class StreamGroupSpec:
    redis: RedisSpec
    group: str
    template: dict[str, Any]
    streams: tuple[str, ...] = ()
    partitioned_streams: tuple[PartitionedStream, ...] = ()
    start_from: str = "$"
    sidecar: SidecarSpec = field(default_factory=SidecarSpec)
    delivery: DeliverySpec = field(default_factory=DeliverySpec)
    claim: ClaimSpec = field(default_factory=ClaimSpec)
    replicas: int = 1
    autoscaling: AutoscalingSpec | None = None
    deletion_policy: str = "Retain"

    @property
    def stream_keys(self) -> tuple[str, ...]:
        """Every key the group reads: the plain streams, then each partitioned stream's partitions."""
        return self.streams + tuple(key for stream in self.partitioned_streams for key in stream.keys)

    def dead_letter_stream(self, stream: str) -> str:
        return dead_letter_key_for(self.delivery.dead_letter_stream, stream, self.redis.mode)

    @property
    def dead_letter_streams(self) -> tuple[str, ...]:
        return tuple(self.dead_letter_stream(stream) for stream in self.stream_keys)

    @property
    def start_position(self) -> str:
        """``startFrom`` as ``XGROUP CREATE`` takes it."""
        return start_position(self.start_from)


# --- parsing ----------------------------------------------------------------------------------


def json_name(f: dataclasses.Field[Any]) -> str:
    """The key of dataclass field ``f`` in the resource: ``max_in_flight`` is ``maxInFlight``."""
    explicit = f.metadata.get("json")
    if explicit:
        return str(explicit)
    head, *rest = f.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


T = TypeVar("T")


def _convert(value: Any, kind: Any, path: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], path)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path} must be an object")
        return _parse(kind, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise SpecError(f"{path} must be a list")
        item = typing.get_args(kind)[0]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{path} must be an object")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path} must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path} must be a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{path} must be a number")
        return value  # an int stays one: the operator writes it back as given (2, not 2.0)
    if kind is str:
        if not isinstance(value, str):
            raise SpecError(f"{path} must be a string")
        return value
    raise TypeError(f"no parser for {kind!r} at {path}")  # a model field of a new type: a bug here


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once: get_type_hints evaluates every annotation anew on each call,
    and the operator parses every StreamGroup's spec on every change."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _parse(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = json_name(f)
        if key in data and data[key] is not None:
            values[f.name] = _convert(data[key], hints[f.name], f"{path}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{path}.{key} is required")
    return cls(**values)


def _checked(spec: StreamGroupSpec) -> StreamGroupSpec:
    """What the schema does not check: one address, the template's syntax, durations, positions."""
    redis = spec.redis
    if (redis.url is None) == (redis.host is None):
        raise SpecError("spec.redis: give exactly one of url and host")
    if redis.mode not in MODES:
        raise SpecError(f"spec.redis.mode must be one of {', '.join(MODES)}")
    if (redis.mode == "sentinel") != (redis.sentinel is not None):
        raise SpecError("spec.redis.sentinel (with masterName) goes with spec.redis.mode sentinel, and only with it")
    try:
        check_url(redis.address, redis.mode)
    except ValueError as exc:
        raise SpecError(f"spec.redis.url: {exc}") from None
    for stream in spec.partitioned_streams:
        if stream.partitions < 1:
            raise SpecError(f"spec.partitionedStreams: {stream.name} needs at least one partition")
    keys = spec.stream_keys
    if not keys:
        raise SpecError("spec: give streams, partitionedStreams or both")
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise SpecError(f"spec.streams and spec.partitionedStreams name a key twice: {', '.join(twice[:5])}")
    if not spec.group:
        raise SpecError("spec.group must not be empty")
    try:
        check_template(spec.delivery.dead_letter_stream)
    except InvalidTemplate as exc:
        raise SpecError(f"spec.delivery.deadLetterStream: {exc}") from None
    if redis.mode == "cluster":
        # A dead letter is written together with its source's XACK by one script: one slot for both.
        for key, dead in zip(keys, spec.dead_letter_streams, strict=True):
            if keyslot(dead) != keyslot(key):
                raise SpecError(
                    f"spec.delivery.deadLetterStream: on a Redis Cluster {dead!r} (slot {keyslot(dead)}) must "
                    f"share the slot of {key!r} (slot {keyslot(key)}); make the stream the hash tag, "
                    "e.g. {{stream}}:dead")
    delivery = spec.delivery
    durations = {"spec.delivery.timeout": delivery.timeout, "spec.delivery.retry.initial": delivery.retry.initial,
                 "spec.delivery.retry.max": delivery.retry.max, "spec.claim.minIdle": spec.claim.min_idle,
                 "spec.claim.interval": spec.claim.interval}
    if spec.delivery.batch is not None:
        durations["spec.delivery.batch.maxWait"] = spec.delivery.batch.max_wait
    for where, text in durations.items():
        try:
            parse_duration(text)
        except InvalidDuration as exc:
            raise SpecError(f"{where}: {exc}") from None
    try:
        start_position(spec.start_from)
    except InvalidEntryID as exc:
        raise SpecError(f"spec.startFrom: {exc}") from None
    return spec


def parse_spec(spec: Mapping[str, Any]) -> StreamGroupSpec:
    """The typed spec of a StreamGroup, from its ``spec`` as the API server returns it."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be an object")
    return _checked(_parse(StreamGroupSpec, spec, "spec"))


def parse_resource(resource: Mapping[str, Any]) -> StreamGroupSpec:
    """:func:`parse_spec` of a whole custom resource; errors name the StreamGroup."""
    meta = resource.get("metadata") or {}
    where = f"StreamGroup {meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
    if not isinstance(resource.get("spec"), Mapping):
        raise SpecError(f"{where} has no spec")
    try:
        return parse_spec(resource["spec"])
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
