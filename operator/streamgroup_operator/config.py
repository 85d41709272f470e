"""The operator's own settings: flags, each with an ``SG_OPERATOR_*`` variable as its fallback.

One frozen dataclass per concern, each field documented, in the style of kopf's settings. One
table (:data:`OPTIONS`) gives every setting its flag, its variable, its default and its help,
and generates ``--help`` and the README's table. Flags win over the environment, so a person
running the operator by hand can override one value of a chart's set-up. The first bad value
stops the start-up with one line naming the flag and the variable (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamgroup_core.durations import parse_duration

# The Dockerfile's sidecar target, tagged as the full image with "-sidecar" after the tag (README: The image).
DEFAULT_SIDECAR_IMAGE = "streamgroup/streamgroup:0.1.0-sidecar"
ENV_PREFIX = "SG_OPERATOR_"
PROG = "streamgroup-operator"


class ConfigError(ValueError):
    """A bad flag or ``SG_OPERATOR_*`` value; the message names both."""


@dataclass(frozen=True)
class SidecarDefaults:
    """What the injected sidecar looks like unless a StreamGroup overrides it."""

    image: str = DEFAULT_SIDECAR_IMAGE
    """Sidecar image: the project's small sidecar image (the full image runs the sidecar too)."""
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
class KubeSettings:
    """Which Kubernetes API server to talk to, and as whom."""

    kubeconfig: str | None = None
    """Kubeconfig file(s), ``:``-separated; unset: in a cluster its service account, else ``$KUBECONFIG``
    or ``~/.kube/config``."""
    context: str | None = None
    """Context of the kubeconfig to use; unset: its current context."""


@dataclass(frozen=True)
class ServerSettings:
    """The operator's health and metrics endpoint."""

    host: str = "0.0.0.0"
    port: int = 8080
    """Port of /healthz and /metrics; 0 picks a free one."""


@dataclass(frozen=True)
class EventSettings:
    """Kubernetes Events about StreamGroups (see :mod:`.recording`)."""

    repeat_interval: float = 60.0
    """While an incident lasts, its Event's count and last time are written at most this often (seconds)."""


@dataclass(frozen=True)
class ElectionSettings:
    """Leader election (see :mod:`.electing`): of the operator's replicas, only the holder of a Lease acts."""

    enabled: bool = True
    """Off: this operator acts at once and alone (run no other)."""
    namespace: str | None = None
    """The Lease's namespace; unset: the pod's (``$POD_NAMESPACE``, else its service account's namespace)."""
    lease_name: str = "streamgroup-operator"
    lease_duration: float = 15.0
    """How long a standby waits, from the last change of the Lease it saw, before it takes the Lease over."""
    renew_deadline: float = 10.0
    """A leader that could not renew for this long stops acting (it exits); shorter than the lease."""
    retry_period: float = 2.0
    """Time between two attempts to renew (the leader) or to acquire (a standby)."""


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    format: str = "json"
    """``json`` (one object per line) or ``text`` (one readable line, ``key=value`` context)."""


@dataclass(frozen=True)
class OperatorSettings:
    sidecar: SidecarDefaults = field(default_factory=SidecarDefaults)
    watch: WatchSettings = field(default_factory=WatchSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    events: EventSettings = field(default_factory=EventSettings)
    election: ElectionSettings = field(default_factory=ElectionSettings)
    logs: LogSettings = field(default_factory=LogSettings)


# --- value parsers ------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A duration with a unit (``10s``, ``1m``), or a bare number of seconds as these variables always took."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        value = parse_duration(raw)
    if not value > 0:
        raise ValueError("must be greater than zero")
    return value


def _port(text: str) -> int:
    raw = text.strip()
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError("expected a TCP port (0-65535)")
    return int(raw)


def _namespaces(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}")
        return text.strip()

    return parse


def _lower_choice(*choices: str) -> Callable[[str], str]:
    inner = _choice(*choices)
    return lambda text: inner(text.lower())


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _optional(text: str) -> str | None:
    return text.strip() or None


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value == "true"


def _name(text: str) -> str:
    """A Kubernetes object name (a DNS subdomain: lower-case letters, digits, ``-`` and ``.``)."""
    value = text.strip()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
        raise ValueError("expected a Kubernetes name: lower-case letters, digits, '-' and '.', at most 253")
    return value


# --- the option table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting as people see it: a flag, an ``SG_OPERATOR_`` variable, a default and a description."""

    name: str
    """Flag name without dashes; the variable is ``SG_OPERATOR_`` + the upper-case name with ``_``."""
    target: str
    """``section.field`` in :class:`OperatorSettings`."""
    parse: Callable[[str], Any]
    default: str | None
    help: str
    metavar: str | None = None
    shown_default: str | None = None
    """The default as the README shows it, when it is not a value (``(all)``)."""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name


OPTIONS: tuple[Option, ...] = (
    Option("namespaces", "watch.namespaces", _namespaces, "",
           "Namespaces to watch, comma-separated; empty: every namespace.", "NS,...", shown_default="(all)"),
    Option("kubeconfig", "kube.kubeconfig", _optional, None,
           "Kubeconfig file (or files, `:`-separated). Unset: the service account when in a cluster, "
           "else `$KUBECONFIG` or `~/.kube/config`.", "PATH"),
    Option("context", "kube.context", _optional, None,
           "Kubeconfig context to use (implies a kubeconfig, even in a cluster). Unset: the current context.",
           "NAME"),
    Option("host", "server.host", _non_empty, "0.0.0.0", "Address of `/healthz` and `/metrics`.", "ADDRESS"),
    Option("port", "server.port", _port, "8080", "Port of `/healthz` and `/metrics` (0: any free port).", "PORT"),
    Option("resync-interval", "watch.resync_interval", _seconds, "10",
           "Time between two measurements of each group (status, metrics, autoscaling): `10s`, `1m`, or "
           "seconds.", "DURATION"),
    Option("consumer-idle-limit", "watch.consumer_idle_limit", _seconds, "300",
           "Idle time after which a consumer of no live pod has its entries handed over and is removed: "
           "`5m`, or seconds.", "DURATION"),
    Option("sidecar-image", "sidecar.image", _non_empty, DEFAULT_SIDECAR_IMAGE,
           "Image injected as the sidecar.", "IMAGE"),
    Option("sidecar-image-pull-policy", "sidecar.image_pull_policy", _choice("Always", "IfNotPresent", "Never"),
           "IfNotPresent", "Pull policy of the sidecar image.", "POLICY"),
    Option("event-repeat-interval", "events.repeat_interval", _seconds, "60",
           "While a problem lasts, how often its Event's count is brought up to date: `1m`, or seconds.",
           "DURATION"),
    Option("leader-elect", "election.enabled", _boolean, "true",
           "Leader election on a `coordination.k8s.io` Lease: of several operators only the Lease's holder acts, "
           "the others stand by. `false`: act at once, alone.", "BOOL"),
    Option("leader-elect-namespace", "election.namespace", _optional, None,
           "Namespace of the Lease. Unset: `$POD_NAMESPACE`, else the service account's namespace; outside a "
           "cluster it must be given (or `--leader-elect false`).", "NS", shown_default="(the pod's)"),
    Option("leader-elect-lease-name", "election.lease_name", _name, "streamgroup-operator",
           "Name of the Lease; operators that share it elect one leader.", "NAME"),
    Option("leader-elect-lease-duration", "election.lease_duration", _seconds, "15",
           "How long a standby waits, from the last renewal it saw, before taking the Lease over.", "DURATION"),
    Option("leader-elect-renew-deadline", "election.renew_deadline", _seconds, "10",
           "A leader that could not renew for this long stops acting (exit status 1); shorter than the "
           "lease duration.", "DURATION"),
    Option("leader-elect-retry-period", "election.retry_period", _seconds, "2",
           "Time between two attempts to renew or to acquire the Lease; shorter than the renew deadline.",
           "DURATION"),
    Option("log-level", "logs.level", _lower_choice("debug", "info", "warning", "error"), "info",
           "Log level: `debug`, `info`, `warning` or `error`.", "LEVEL"),
    Option("log-format", "logs.format", _lower_choice("json", "text"), "json",
           "`json` (one object per line) or `text` (readable lines); both name the StreamGroup.", "FORMAT"),
)

_SECTIONS: dict[str, type[Any]] = {
    "sidecar": SidecarDefaults, "watch": WatchSettings, "kube": KubeSettings, "server": ServerSettings,
    "events": EventSettings, "election": ElectionSettings, "logs": LogSettings,
}


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the StreamGroup operator: consumer groups and autoscaled Deployments from StreamGroup "
        f"resources. Every flag also reads an environment variable ({ENV_PREFIX}NAME); flags win.",
    )
    for option in OPTIONS:
        default = option.shown_default or option.default
        shown = f" (default: {default})" if default else ""
        parser.add_argument(option.flag, dest=option.name, default=None, metavar=option.metavar,
                            help=f"{option.help.replace('%', '%%').replace('`', '')} [{option.env}]{shown}")
    return parser


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from flags, then ``SG_OPERATOR_*`` variables, then defaults; :class:`ConfigError` on a bad one.

    ``--help`` and an unknown flag end the process the argparse way (exit 0, resp. 2 with the usage).
    """
    env = os.environ if environ is None else environ
    args = vars(arg_parser().parse_args(list(argv) if argv is not None else []))
    sections: dict[str, dict[str, Any]] = {}
    for option in OPTIONS:
        raw: str | None = args.get(option.name)
        source = option.flag
        if raw is None:
            raw, source = env.get(option.env), option.env
        if raw is None:
            raw, source = option.default, "default"
        if raw is None:
            continue
        try:
            value = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {option.flag} / {option.env} (from {source}={raw!r}): {exc}") from None
        section, _, name = option.target.partition(".")
        sections.setdefault(section, {})[name] = value
    settings = OperatorSettings(**{name: kind(**sections.get(name, {})) for name, kind in _SECTIONS.items()})
    _check_election(settings.election)
    return settings


def _check_election(election: ElectionSettings) -> None:
    """A leader must stop before its Lease could be taken, and have tried to renew more than once by then."""
    if not election.enabled:
        return
    if not election.renew_deadline < election.lease_duration:
        raise ConfigError(f"--leader-elect-renew-deadline ({election.renew_deadline:g}s) must be shorter than "
                          f"--leader-elect-lease-duration ({election.lease_duration:g}s): a leader stops acting "
                          "before its Lease can be taken over")
    if not election.retry_period < election.renew_deadline:
        raise ConfigError(f"--leader-elect-retry-period ({election.retry_period:g}s) must be shorter than "
                          f"--leader-elect-renew-deadline ({election.renew_deadline:g}s)")


def options_markdown() -> str:
    """The README's table of the operator's settings, generated from :data:`OPTIONS` (a test keeps them equal)."""
    lines = ["| Operator flag | Environment | Default | Meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = option.shown_default or (f"`{option.default}`" if option.default else "—")
        lines.append(f"| `{option.flag}` | `{option.env}` | {default} | {option.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - used by hack/update-readme.sh
    print(options_markdown(), end="")
