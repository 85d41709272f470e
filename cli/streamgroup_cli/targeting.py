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
import re
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from streamgroup_operator.grouping import Connection  # the operator resolves a StreamGroup the same way

from . import CLIError
from .reading import prepare

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DEAD_LETTER_STREAM = "{stream}:dead"
API_GROUP, API_VERSION, PLURAL = "streamgroup.io", "v1alpha1", "streamgroups"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z]+://[^/@:\s]*):[^/@\s]*@", re.IGNORECASE)
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Target:
    connection: Connection
    label: str
    """How messages name the target: ``StreamGroup shop/orders`` or the URL without its password."""
    streams: tuple[str, ...] = ()
    group: str | None = None
    dead_letter_template: str = DEFAULT_DEAD_LETTER_STREAM

    def dead_letter_stream(self, stream: str) -> str:
        return self.dead_letter_template.replace("{stream}", stream)

    @property
    def dead_letter_streams(self) -> tuple[str, ...]:
        return tuple(self.dead_letter_stream(stream) for stream in self.streams)


def hide_password(url: str) -> str:
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", url)


def url_target(url: str | None, env: Mapping[str, str]) -> Target:
    """``url``, else ``$SG_REDIS_URL``, else localhost; ``$SG_REDIS_PASSWORD``/``$SG_REDIS_USERNAME`` log in."""
    chosen = url or env.get("SG_REDIS_URL") or DEFAULT_URL
    username, password = env.get("SG_REDIS_USERNAME") or None, env.get("SG_REDIS_PASSWORD") or None
    return Target(Connection(chosen, username=username, password=password), label=hide_password(chosen))


def with_url(target: Target, url: str) -> Target:
    """The StreamGroup's streams and credentials, through another address (e.g. a port-forward)."""
    label = f"{target.label} via {hide_password(url)}"
    return replace(target, connection=replace(target.connection, url=url), label=label)


# -- StreamGroup resources ----------------------------------------------------------------------------------


def _where(resource: Mapping[str, Any]) -> tuple[str, str]:
    meta = resource.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "?")


def secrets_needed(resource: Mapping[str, Any]) -> list[str]:
    """Names of the Secrets (in the resource's namespace) that :func:`streamgroup_target` will read."""
    redis_spec = (resource.get("spec") or {}).get("redis") or {}
    tls = redis_spec.get("tls") or {}
    refs = [redis_spec.get("passwordSecretRef"), tls.get("caSecretRef"), tls.get("clientCertSecretRef")]
    names: list[str] = []
    for ref in refs:
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str) and ref["name"] not in names:
            names.append(ref["name"])
    return names


def _secret_value(
    resource: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str] | None], name: str, key: str
) -> bytes:
    namespace, _ = _where(resource)
    data = secrets.get(name)
    if data is None:
        raise CLIError(f"Secret {namespace}/{name} not found")
    if key not in data:
        raise CLIError(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError):
        raise CLIError(f"Secret {namespace}/{name} key {key!r} is not valid base64") from None


def redis_url(redis_spec: Mapping[str, Any]) -> str:
    """The URL from ``spec.redis`` (``url``, or ``host``/``port``/``db``), ``rediss://`` when TLS is on."""
    tls = bool((redis_spec.get("tls") or {}).get("enabled"))
    if redis_spec.get("url"):
        url = str(redis_spec["url"])
        return "rediss://" + url[len("redis://"):] if tls and url.startswith("redis://") else url
    host = redis_spec.get("host")
    if not host:
        raise CLIError("spec.redis has neither url nor host")
    return f"{'rediss' if tls else 'redis'}://{host}:{redis_spec.get('port', 6379)}/{redis_spec.get('db', 0)}"


def streamgroup_target(resource: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str] | None]) -> Target:
    """Connection, streams, group and dead-letter streams of a StreamGroup.

    ``resource`` is the custom resource as the API returns it; ``secrets`` maps the name of each Secret in
    :func:`secrets_needed` to its ``data`` (values base64-encoded, as the API returns them), or to ``None``
    if it does not exist.
    """
    namespace, name = _where(resource)
    where = f"StreamGroup {namespace}/{name}"
    spec = resource.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("redis"), Mapping):
        raise CLIError(f"{where} has no spec.redis")
    redis_spec: Mapping[str, Any] = spec["redis"]
    streams = spec.get("streams")
    if not isinstance(streams, list) or not streams or not all(isinstance(s, str) and s for s in streams):
        raise CLIError(f"{where} has no spec.streams")
    group = spec.get("group")
    if not isinstance(group, str) or not group:
        raise CLIError(f"{where} has no spec.group")
    try:
        url = redis_url(redis_spec)
    except CLIError as exc:
        raise CLIError(f"{where}: {exc}") from None

    password = None
    if ref := redis_spec.get("passwordSecretRef"):
        key = ref.get("key") or "password"
        raw = _secret_value(resource, secrets, ref["name"], key)
        try:
            password = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CLIError(f"Secret {namespace}/{ref['name']} key {key!r} is not UTF-8 text") from None
    tls = redis_spec.get("tls") or {}
    ca = cert = private_key = None
    if ref := tls.get("caSecretRef"):
        ca = _secret_value(resource, secrets, ref["name"], ref.get("key") or "ca.crt")
    if ref := tls.get("clientCertSecretRef"):
        cert = _secret_value(resource, secrets, ref["name"], "tls.crt")
        private_key = _secret_value(resource, secrets, ref["name"], "tls.key")

    template = str((spec.get("delivery") or {}).get("deadLetterStream") or DEFAULT_DEAD_LETTER_STREAM)
    connection = Connection(url, username=redis_spec.get("username") or None, password=password,
                            ca_pem=ca, client_cert_pem=cert, client_key_pem=private_key)
    return Target(connection, label=where, streams=tuple(streams), group=group, dead_letter_template=template)


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
    """A synchronous client for the target, closed (and any TLS key file removed) on exit."""
    conn = target.connection
    kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 30}
    if conn.username:
        kwargs["username"] = conn.username
    if conn.password:
        kwargs["password"] = conn.password
    with contextlib.ExitStack() as stack:
        if conn.url.startswith("rediss://"):
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            if conn.ca_pem:
                kwargs["ssl_ca_data"] = conn.ca_pem.decode()
            if conn.client_cert_pem and conn.client_key_pem:
                # The ssl module loads client certificates from files only.
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-tls-")))
                (folder / "tls.key").touch(mode=0o600)
                (folder / "tls.key").write_bytes(conn.client_key_pem)
                (folder / "tls.crt").write_bytes(conn.client_cert_pem)
                kwargs["ssl_certfile"], kwargs["ssl_keyfile"] = str(folder / "tls.crt"), str(folder / "tls.key")
        try:
            client = redis.Redis.from_url(conn.url, **kwargs)
        except ValueError as exc:
            raise CLIError(f"bad Redis URL {hide_password(conn.url)!r}: {exc}") from None
        try:
            yield prepare(client)
        finally:
            client.close()


def redact(message: str, target: Target | None) -> str:
    """``message`` without the target's password or any password inside a URL."""
    message = hide_password(message)
    if target is None:
        return message
    try:
        in_url = urllib.parse.urlsplit(target.connection.url).password
    except ValueError:
        in_url = None
    for password in (target.connection.password, in_url and urllib.parse.unquote(in_url), in_url):
        if password and len(password) >= 3:
            message = message.replace(password, "***")
    return message
