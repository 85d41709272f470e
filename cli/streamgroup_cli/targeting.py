"""Which Redis to talk to, and which streams, group and dead-letter streams to look at.

Two ways to name the target: a Redis URL (``--redis-url``, ``$SG_REDIS_URL``, password optionally from
``$SG_REDIS_PASSWORD``), or a StreamGroup resource (``--streamgroup NAME``), whose spec already says
where Redis is, how to log in (through a Secret) and which streams and group it covers. Reading the
resource is split in two so the interesting part is testable without a cluster: :func:`streamgroup_target`
is a pure function from the resource and its Secrets' data to a :class:`Target`, and
:func:`load_streamgroup` is the thin part that fetches them with the kubernetes client.

Secrets never leave this module in printable form: :class:`Connection` hides them from ``repr`` and
:func:`redact` scrubs them from any error message before it is printed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from streamgroup_core import kubeconfigs
from streamgroup_core.addresses import DEFAULT_URL, MODES, check_url
from streamgroup_core.connecting import Endpoint, Sentinels, sync_client
from streamgroup_core.deadletters import DEFAULT_TEMPLATE, dead_letter_key_for
from streamgroup_core.redaction import hide_url_passwords
from streamgroup_core.redaction import redact as redact_secrets
from streamgroup_core.spec import API_GROUP, API_VERSION, PLURAL, SecretMissing, SpecError, parse_resource

from . import CLIError
from .reading import prepare

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Target:
    connection: Endpoint
    label: str
    """How messages name the target: ``StreamGroup shop/orders`` or the URL without its password."""
    streams: tuple[str, ...] = ()
    group: str | None = None
    partitions: dict[str, int] = field(default_factory=dict)
    """A StreamGroup's partitioned streams: name → partitions."""
    dead_letter_template: str = DEFAULT_TEMPLATE

    def dead_letter_stream(self, stream: str) -> str:
        return dead_letter_key_for(self.dead_letter_template, stream, self.connection.mode)

    @property
    def dead_letter_streams(self) -> tuple[str, ...]:
        return tuple(self.dead_letter_stream(stream) for stream in self.streams)


def url_target(url: str | None, env: Mapping[str, str], mode: str | None = None,
               sentinel_master: str | None = None) -> Target:
    """``url``, else ``$SG_REDIS_URL``, else localhost; ``$SG_REDIS_PASSWORD``/``$SG_REDIS_USERNAME`` log in.

    ``mode`` (else ``$SG_REDIS_MODE``, else standalone) and, in sentinel mode, the primary's name (else
    ``$SG_REDIS_SENTINEL_MASTER``) with the sentinels' own ``$SG_REDIS_SENTINEL_USERNAME`` and
    ``$SG_REDIS_SENTINEL_PASSWORD``: the same variables as the sidecar's.
    """
    chosen = url or env.get("SG_REDIS_URL") or DEFAULT_URL
    username, password = env.get("SG_REDIS_USERNAME") or None, env.get("SG_REDIS_PASSWORD") or None
    mode = mode or env.get("SG_REDIS_MODE") or "standalone"
    master = sentinel_master or env.get("SG_REDIS_SENTINEL_MASTER") or None
    if mode not in MODES:
        raise CLIError(f"--redis-mode must be one of {', '.join(MODES)}")
    if (mode == "sentinel") != (master is not None):
        raise CLIError("--redis-sentinel-master (or $SG_REDIS_SENTINEL_MASTER) goes with --redis-mode sentinel, "
                       "and only with it")
    try:
        check_url(chosen, mode)
    except ValueError as exc:
        raise CLIError(f"bad Redis URL {hide_url_passwords(chosen)!r}: {exc}") from None
    sentinels = None
    if master is not None:
        sentinels = Sentinels(master, username=env.get("SG_REDIS_SENTINEL_USERNAME") or None,
                              password=env.get("SG_REDIS_SENTINEL_PASSWORD") or None)
    endpoint = Endpoint(chosen, username=username, password=password, mode=mode, sentinels=sentinels)
    return Target(endpoint, label=hide_url_passwords(chosen))


def with_url(target: Target, url: str) -> Target:
    """The StreamGroup's streams and credentials, through another address (e.g. a port-forward)."""
    label = f"{target.label} via {hide_url_passwords(url)}"
    return replace(target, connection=replace(target.connection, url=url), label=label)


# -- StreamGroup resources ----------------------------------------------------------------------------------


def secrets_needed(resource: Mapping[str, Any]) -> list[str]:
    """Names of the Secrets (in the resource's namespace) that :func:`streamgroup_target` will read."""
    try:
        return parse_resource(resource).redis.secret_names()
    except SpecError as exc:
        raise CLIError(str(exc)) from None


def _decoded(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, bytes]:
    decoded = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise CLIError(f"Secret {namespace}/{name} key {key!r} is not valid base64") from None
    return decoded


def streamgroup_target(resource: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str] | None]) -> Target:
    """Connection, streams, group and dead-letter streams of a StreamGroup.

    ``resource`` is the custom resource as the API returns it; ``secrets`` maps the name of each Secret in
    :func:`secrets_needed` to its ``data`` (values base64-encoded, as the API returns them), or to ``None``
    if it does not exist.
    """
    meta = resource.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "?")
    try:
        spec = parse_resource(resource)
        decoded = {key: None if data is None else _decoded(namespace, key, data) for key, data in secrets.items()}
        endpoint = spec.redis.endpoint(namespace, decoded)
    except (SpecError, SecretMissing) as exc:
        raise CLIError(str(exc)) from None
    return Target(endpoint, label=f"StreamGroup {namespace}/{name}", streams=spec.stream_keys, group=spec.group,
                  partitions={stream.name: stream.partitions for stream in spec.partitioned_streams},
                  dead_letter_template=spec.delivery.dead_letter_stream)


def load_streamgroup(
    name: str, namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> Target:
    """Fetch the StreamGroup and its Secrets with the kubernetes client, then :func:`streamgroup_target`."""
    try:
        from kubernetes import client as k8s
        from kubernetes import config
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise CLIError("--streamgroup needs the kubernetes package: pip install 'streamgroup[operator]'") from None
    import urllib3.exceptions

    try:
        api, default_namespace = _api_client(config, kubeconfig, context)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        raise CLIError(f"cannot load the Kubernetes configuration: {exc}") from None
    namespace = namespace or default_namespace
    what = f"StreamGroup {namespace}/{name}"
    with api:
        try:
            resource: Any = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=15)
            secrets: dict[str, Mapping[str, str] | None] = {}
            for secret_name in secrets_needed(resource):
                what = f"Secret {namespace}/{secret_name}"
                try:
                    secret = k8s.CoreV1Api(api).read_namespaced_secret(secret_name, namespace, _request_timeout=15)
                    data: Any = secret.data
                    secrets[secret_name] = data or {}
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    secrets[secret_name] = None
        except ApiException as exc:
            if exc.status == 404:
                raise CLIError(f"{what} not found") from None
            if exc.status in (401, 403):
                raise CLIError(f"not allowed to read {what} ({exc.status} {exc.reason})") from None
            raise CLIError(f"Kubernetes API error reading {what}: {exc.status} {exc.reason}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise CLIError(f"cannot reach the Kubernetes API: {exc}") from None
    return streamgroup_target(resource, secrets)


def _api_client(config: Any, kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """An ApiClient and the namespace to use when none is given (the context's, else ``default``)."""
    kubeconfigs.keep_in_memory()  # a kubeconfig's embedded key is never written to the temporary folder
    default_file = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
    if kubeconfig is None and not os.path.exists(default_file) and os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kubernetes import client as k8s

        config.load_incluster_config()
        namespace = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else "default"
        return k8s.ApiClient(), namespace
    if kubeconfig is not None and not os.path.exists(kubeconfig):
        raise ValueError(f"{kubeconfig} does not exist")
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    if context and chosen is None:
        raise ValueError(f"no context {context!r} in the kubeconfig")
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    api = config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
    return api, str(namespace)


# -- connecting ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def connected(target: Target) -> Iterator[redis.Redis]:
    """A synchronous client for the target, closed on exit."""
    try:
        client = sync_client(target.connection, socket_timeout=30)
    except ValueError as exc:
        raise CLIError(f"bad Redis URL {target.connection.label!r}: {exc}") from None
    try:
        yield prepare(client)
    finally:
        client.close()


def redact(message: str, target: Target | None) -> str:
    """``message`` without the target's password or any password inside a URL."""
    return redact_secrets(message, target.connection.secrets if target is not None else ())
