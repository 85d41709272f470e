"""The StreamGroup's typed spec: defaults that are the CRD's, clear errors, secrets resolved once."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamgroup_core.connecting import Pem, Sentinels
from streamgroup_core.spec import SecretMissing, SpecError, StreamGroupSpec, json_name, parse_resource, parse_spec

CRD = Path(__file__).parents[2] / "crds" / "streamgroup.io_streamgroups.yaml"


def minimal(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"redis": {"url": "redis://r:6379/0"}, "streams": ["orders", "refunds"],
                            "group": "billing", "template": {"spec": {"containers": [{"name": "app"}]}}}
    base.update(spec)
    return base


def schema_defaults(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Every ``default`` in the schema below ``spec``, by dotted JSON path."""
    found: dict[str, Any] = {}
    for key, sub in (schema.get("properties") or {}).items():
        where = f"{path}.{key}" if path else key
        if "default" in sub:
            found[where] = sub["default"]
        found.update(schema_defaults(sub, where))
    return found


def model_default(path: str) -> Any:
    """The default the model gives the field at JSON ``path``, building required parents as needed."""
    kind: Any = StreamGroupSpec
    for part in path.split("."):
        hints = typing.get_type_hints(kind)
        [f] = [f for f in dataclasses.fields(kind) if json_name(f) == part]
        value = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, __import__("types").UnionType):
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return value


class TestDefaults:
    def test_every_default_of_the_crd_is_the_models_default(self) -> None:
        crd = yaml.safe_load(CRD.read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        defaults = schema_defaults(schema)
        assert len(defaults) >= 20  # the walk found the schema's defaults, not nothing
        for path, value in defaults.items():
            assert model_default(path) == value, path

    def test_a_minimal_spec_gets_the_defaults(self) -> None:
        spec = parse_spec(minimal())
        assert spec.delivery.max_in_flight == 32 and spec.delivery.timeout == "30s"
        assert spec.claim.min_idle_seconds == 30.0 and spec.deletion_policy == "Retain"
        assert spec.autoscaling is None and spec.delivery.batch is None
        assert spec.dead_letter_streams == ("orders:dead", "refunds:dead")


class TestParsing:
    def test_camel_case_fields_nested_objects_and_lists_are_read(self) -> None:
        spec = parse_spec(minimal(delivery={"maxInFlight": 64, "batch": {"size": 8}, "deadLetterStatuses": [422]},
                                  autoscaling={"maxReplicas": 5, "targetLagPerReplica": 10}, startFrom="0"))
        assert spec.delivery.max_in_flight == 64 and spec.delivery.batch is not None
        assert spec.delivery.batch.size == 8 and spec.delivery.batch.max_wait == "5ms"
        assert spec.delivery.dead_letter_statuses == (422,)
        assert spec.autoscaling is not None and spec.autoscaling.max_replicas == 5
        assert spec.autoscaling.min_replicas == 1 and spec.start_position == "0"

    @pytest.mark.parametrize("spec, needle", [
        (minimal(redis={}), "exactly one of url and host"),
        (minimal(redis={"url": "redis://r", "host": "r"}), "exactly one of url and host"),
        ({"redis": {"url": "redis://r"}, "group": "g", "template": {}}, "give streams, partitionedStreams or both"),
        (minimal(streams=["a", "a"]), "name a key twice: a"),
        (minimal(streams=["orders:{1}"], partitionedStreams=[{"name": "orders", "partitions": 2}]),
         r"name a key twice: orders:\{1\}"),
        (minimal(partitionedStreams=[{"name": "orders", "partitions": 0}]), "at least one partition"),
        (minimal(partitionedStreams=[{"name": "orders"}]), r"spec\.partitionedStreams\[0\]\.partitions is required"),
        (minimal(delivery={"maxInFlight": "many"}), r"spec\.delivery\.maxInFlight must be a whole number"),
        (minimal(delivery={"maxInFlight": True}), r"spec\.delivery\.maxInFlight must be a whole number"),
        (minimal(delivery={"deadLetterStream": "dlq"}), "must contain {stream}"),
        (minimal(claim={"minIdle": "30"}), r"spec\.claim\.minIdle: .*add a unit"),
        (minimal(startFrom="yesterday"), r"spec\.startFrom"),
        (minimal(autoscaling={}), r"spec\.autoscaling\.maxReplicas is required"),
    ])
    def test_a_spec_that_cannot_be_used_is_refused_naming_the_field(self, spec: dict[str, Any], needle: str) -> None:
        with pytest.raises(SpecError, match=needle):
            parse_spec(spec)

    def test_errors_about_a_resource_name_it(self) -> None:
        with pytest.raises(SpecError, match=r"^StreamGroup shop/orders: spec\.redis is required$"):
            parse_resource({"metadata": {"namespace": "shop", "name": "orders"}, "spec": {}})
        with pytest.raises(SpecError, match="StreamGroup shop/orders has no spec"):
            parse_resource({"metadata": {"namespace": "shop", "name": "orders"}})

    def test_whole_numbers_stay_whole_where_a_number_is_allowed(self) -> None:
        retry = parse_spec(minimal(delivery={"retry": {"multiplier": 3, "jitter": 0.1}})).delivery.retry
        assert (str(retry.multiplier), str(retry.jitter)) == ("3", "0.1")  # written back to the sidecar as given


class TestPartitionedStreams:
    def test_a_partitioned_stream_is_read_as_one_key_per_partition_after_the_plain_streams(self) -> None:
        spec = parse_spec(minimal(streams=["refunds"], partitionedStreams=[{"name": "orders", "partitions": 3}]))
        assert spec.stream_keys == ("refunds", "orders:{0}", "orders:{1}", "orders:{2}")
        assert spec.dead_letter_streams == ("refunds:dead", "orders:{0}:dead", "orders:{1}:dead", "orders:{2}:dead")

    def test_partitioned_streams_alone_are_enough(self) -> None:
        spec = parse_spec({"redis": {"url": "redis://r"}, "group": "g", "template": {},
                           "partitionedStreams": [{"name": "orders", "partitions": 2}]})
        assert spec.streams == () and spec.stream_keys == ("orders:{0}", "orders:{1}")


class TestRedisAddress:
    @pytest.mark.parametrize("redis, expected", [
        ({"url": "redis://r:6379/0"}, "redis://r:6379/0"),
        ({"url": "redis://r:6379/0", "tls": {"enabled": True}}, "rediss://r:6379/0"),
        ({"host": "r"}, "redis://r:6379/0"),
        ({"host": "r", "port": 7000, "db": 3, "tls": {"enabled": True}}, "rediss://r:7000/3"),
    ])
    def test_the_address_comes_from_url_or_host(self, redis: dict[str, Any], expected: str) -> None:
        assert parse_spec(minimal(redis=redis)).redis.address == expected


class TestRedisModes:
    def test_a_sentinel_set_up_names_the_primary_and_the_sentinels_credentials(self) -> None:
        redis = parse_spec(minimal(redis={
            "url": "redis://s-0:26379,s-1:26379", "mode": "sentinel", "passwordSecretRef": {"name": "data"},
            "sentinel": {"masterName": "main", "username": "watcher", "passwordSecretRef": {"name": "watch"}}})).redis
        assert redis.secret_names() == ["data", "watch"]
        endpoint = redis.endpoint("shop", {"data": {"password": b"d"}, "watch": {"password": b"w"}})
        assert (endpoint.mode, endpoint.password) == ("sentinel", "d")
        assert endpoint.sentinels == Sentinels("main", username="watcher", password="w")
        assert endpoint.hosts() == [("s-0", 26379), ("s-1", 26379)]

    def test_a_cluster_lists_seed_nodes_and_keeps_dead_letters_in_their_sources_slots(self) -> None:
        spec = parse_spec(minimal(redis={"url": "redis://r-0:6379,r-1:6379", "mode": "cluster"},
                                  partitionedStreams=[{"name": "payments", "partitions": 1}]))
        assert spec.dead_letter_streams == ("{orders}:dead", "{refunds}:dead", "payments:{0}:dead")
        redis = spec.redis
        endpoint = redis.endpoint("shop", {})
        assert (endpoint.mode, endpoint.hosts()) == ("cluster", [("r-0", 6379), ("r-1", 6379)])

    @pytest.mark.parametrize("redis, needle", [
        ({"url": "redis://s:26379", "mode": "sentinel"}, "goes with spec.redis.mode sentinel"),
        ({"url": "redis://r:6379", "sentinel": {"masterName": "m"}}, "goes with spec.redis.mode sentinel"),
        ({"url": "redis://a:1,b:2"}, "cluster or sentinel mode"),
        ({"host": "r", "db": 2, "mode": "cluster"}, "only database 0"),
        ({"url": "redis://r", "mode": "replicated"}, "must be one of standalone, cluster, sentinel"),
    ])
    def test_contradictions_are_refused(self, redis: dict[str, Any], needle: str) -> None:
        with pytest.raises(SpecError, match=needle):
            parse_spec(minimal(redis=redis))

    def test_on_a_cluster_a_dead_letter_key_outside_its_sources_slot_is_refused_naming_both(self) -> None:
        with pytest.raises(SpecError, match=r"'dlq:orders' \(slot \d+\) must share the slot of 'orders'"):
            parse_spec(minimal(redis={"url": "redis://r", "mode": "cluster"},
                               delivery={"deadLetterStream": "dlq:{stream}"}))
        spec = parse_spec(minimal(redis={"url": "redis://r", "mode": "cluster"},
                                  delivery={"deadLetterStream": "dlq:{{stream}}"}))
        assert spec.dead_letter_streams == ("dlq:{orders}", "dlq:{refunds}")



class TestSecrets:
    REDIS = {"url": "rediss://r:6379/0", "username": "sg", "passwordSecretRef": {"name": "auth"},
             "tls": {"caSecretRef": {"name": "auth", "key": "ca.pem"}, "clientCertSecretRef": {"name": "client"},
                     "serverName": "redis.internal"}}

    def test_each_secret_is_named_once_and_its_values_fill_the_endpoint(self) -> None:
        redis = parse_spec(minimal(redis=self.REDIS)).redis
        assert redis.secret_names() == ["auth", "client"]
        endpoint = redis.endpoint("shop", {"auth": {"password": b"pw", "ca.pem": b"CA"},
                                           "client": {"tls.crt": b"CERT", "tls.key": b"KEY"}})
        assert (endpoint.url, endpoint.username, endpoint.password) == ("rediss://r:6379/0", "sg", "pw")
        assert endpoint.tls.ca == Pem(data=b"CA") and endpoint.tls.key == Pem(data=b"KEY")
        assert endpoint.tls.server_name == "redis.internal"

    def test_a_missing_secret_or_key_is_named_without_its_values(self) -> None:
        redis = parse_spec(minimal(redis=self.REDIS)).redis
        with pytest.raises(SecretMissing, match=r"^Secret shop/client not found$"):
            redis.endpoint("shop", {"auth": {"password": b"pw", "ca.pem": b"CA"}, "client": None})
        with pytest.raises(SecretMissing, match=r"^Secret shop/auth has no key 'ca.pem'$") as caught:
            redis.endpoint("shop", {"auth": {"password": b"pw"}, "client": {"tls.crt": b"C", "tls.key": b"K"}})
        assert "pw" not in str(caught.value)

    def test_the_operator_logs_in_as_its_own_user_when_given_and_as_the_sidecars_otherwise(self) -> None:
        redis = parse_spec(minimal(redis={**self.REDIS, "operatorCredentials": {
            "username": "sg-operator", "passwordSecretRef": {"name": "operator-auth", "key": "pw"}}})).redis
        assert redis.secret_names() == ["auth", "client", "operator-auth"]
        secrets = {"auth": {"password": b"sidecar-pw", "ca.pem": b"CA"}, "operator-auth": {"pw": b"operator-pw"},
                   "client": {"tls.crt": b"CERT", "tls.key": b"KEY"}}
        sidecar, operator = redis.endpoint("shop", secrets), redis.endpoint("shop", secrets, operator=True)
        assert (sidecar.username, sidecar.password) == ("sg", "sidecar-pw")
        assert (operator.username, operator.password) == ("sg-operator", "operator-pw")
        assert operator.tls == sidecar.tls and operator.url == sidecar.url
        plain = parse_spec(minimal(redis=self.REDIS)).redis
        assert plain.endpoint("shop", secrets, operator=True).username == "sg"
