"""The operator's own settings, read once from ``SG_OPERATOR_*`` environment variables.

One frozen dataclass per concern, each field documented, in the style of kopf's settings.
The Helm chart sets these variables; running the operator by hand, set them yourself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SIDECAR_IMAGE = "streamgroup/streamgroup:0.1.0"


class ConfigError(ValueError):
    """A bad ``SG_OPERATOR_*`` value; the message names the variable."""


@dataclass(frozen=True)
class SidecarDefaults:
    """What the injected sidecar looks like unless a StreamGroup overrides it."""

    image: str = DEFAULT_SIDECAR_IMAGE
    """Sidecar image (the project's one image runs the sidecar by default)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the sidecar image."""
    health_port: int = 9400
    """Port of the sidecar's /healthz, /readyz and /metrics inside the pod."""
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class WatchSettings:
    """Which StreamGroups this operator reconciles, and how often it looks at their groups."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    resync_interval: float = 10.0
    """Seconds between two reads of each group's lag and pending (status, metrics, autoscaling)."""
    consumer_idle_limit: float = 300.0
    """A consumer of no live replica, idle this long, has its pending entries handed over and is removed."""


@dataclass(frozen=True)
class ServerSettings:
    """The operator's health and metrics endpoint."""

    host: str = "0.0.0.0"
    port: int = 8080
    """Port of /healthz and /metrics; 0 picks a free one."""


@dataclass(frozen=True)
class OperatorSettings:
    sidecar: SidecarDefaults = field(default_factory=SidecarDefaults)
    watch: WatchSettings = field(default_factory=WatchSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be greater than zero")
    return value


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"{name}={raw!r}: expected a TCP port")
    return int(raw)


def from_environ(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    env = os.environ if environ is None else environ
    namespaces = tuple(n.strip() for n in env.get("SG_OPERATOR_NAMESPACES", "").split(",") if n.strip())
    policy = env.get("SG_OPERATOR_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent")
    if policy not in ("Always", "IfNotPresent", "Never"):
        raise ConfigError(f"SG_OPERATOR_SIDECAR_IMAGE_PULL_POLICY={policy!r}: expected Always, IfNotPresent or Never")
    return OperatorSettings(
        sidecar=SidecarDefaults(
            image=env.get("SG_OPERATOR_SIDECAR_IMAGE", DEFAULT_SIDECAR_IMAGE),
            image_pull_policy=policy,
        ),
        watch=WatchSettings(
            namespaces=namespaces,
            resync_interval=_float(env, "SG_OPERATOR_RESYNC_INTERVAL", 10.0),
            consumer_idle_limit=_float(env, "SG_OPERATOR_CONSUMER_IDLE_LIMIT", 300.0),
        ),
        server=ServerSettings(
            host=env.get("SG_OPERATOR_HOST", "0.0.0.0"),
            port=_port(env, "SG_OPERATOR_PORT", 8080),
        ),
    )
