"""Configuration: flags and SG_ variables, defaults, and bad values that stop the start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamgroup_core.redaction import hide_url_passwords
from streamgroup_sidecar.config import OPTIONS, ConfigError, options_markdown, parse_settings

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"SG_STREAMS": "a,b", "SG_GROUP": "g"}


class TestSources:
    def test_defaults_apply_when_only_streams_and_group_are_given(self) -> None:
        settings = parse_settings([], {**MINIMAL, "HOSTNAME": "pod-7"})
        assert settings.group.streams == ("a", "b")
        assert settings.group.consumer == "pod-7"
        assert settings.group.start_from == "$"
        assert settings.delivery.app_url == "http://127.0.0.1:8080/"
        assert settings.delivery.max_in_flight == 32
        assert settings.retry.initial == 0.2 and settings.retry.maximum == 30.0
        assert settings.server.port == 9400

    def test_flags_win_over_the_environment(self) -> None:
        settings = parse_settings(["--max-in-flight", "5", "--group", "from-flag"],
                                  {**MINIMAL, "SG_MAX_IN_FLIGHT": "9"})
        assert settings.delivery.max_in_flight == 5
        assert settings.group.group == "from-flag"

    def test_durations_take_units_and_combinations(self) -> None:
        settings = parse_settings([], {**MINIMAL, "SG_REQUEST_TIMEOUT": "1m30s", "SG_RETRY_INITIAL": "250ms",
                                       "SG_RETRY_MAX": "2.5s", "SG_SHUTDOWN_GRACE": "1h"})
        assert settings.delivery.request_timeout == 90.0
        assert settings.retry.initial == 0.25
        assert settings.retry.maximum == 2.5
        assert settings.shutdown.grace == 3600.0

    def test_the_password_comes_only_from_the_environment_and_never_shows_in_repr(self) -> None:
        settings = parse_settings([], {**MINIMAL, "SG_REDIS_PASSWORD": "s3cret"})
        assert settings.redis.password == "s3cret"
        assert "s3cret" not in repr(settings)
        with pytest.raises(ConfigError, match="--redis-password is no flag: set SG_REDIS_PASSWORD"):
            parse_settings(["--redis-password", "x"], MINIMAL)

    def test_timestamps_become_entry_ids_and_statuses_a_set(self) -> None:
        settings = parse_settings([], {**MINIMAL, "SG_START_FROM": "2023-11-14T22:13:20Z",
                                       "SG_DEAD_LETTER_STATUSES": "400, 410", "SG_BODY": "RAW",
                                       "SG_BODY_FIELD": "payload"})
        assert settings.group.start_from.startswith("1699999999999-")
        assert settings.delivery.dead_letter_statuses == {400, 410}
        assert settings.delivery.body == "raw"
        assert parse_settings([], {**MINIMAL, "SG_DEAD_LETTER_STATUSES": ""}).delivery.dead_letter_statuses == set()


class TestRedisModes:
    def test_cluster_mode_takes_a_list_of_seed_nodes(self) -> None:
        settings = parse_settings(["--redis-mode", "cluster"], {**MINIMAL, "SG_REDIS_URL": "redis://r-0:6379,r-1:6379"})
        assert (settings.redis.mode, settings.redis.url) == ("cluster", "redis://r-0:6379,r-1:6379")

    def test_sentinel_mode_takes_the_primarys_name_and_the_sentinels_own_credentials_from_the_environment(
        self,
    ) -> None:
        settings = parse_settings(["--redis-mode", "sentinel", "--redis-sentinel-master", "main"], {
            **MINIMAL, "SG_REDIS_URL": "redis://s-0,s-1", "SG_REDIS_SENTINEL_USERNAME": "watcher",
            "SG_REDIS_SENTINEL_PASSWORD": "s3cret"})
        redis = settings.redis
        assert (redis.mode, redis.sentinel_master, redis.sentinel_username) == ("sentinel", "main", "watcher")
        assert redis.sentinel_password == "s3cret" and "s3cret" not in repr(settings)

    @pytest.mark.parametrize("env, needle", [
        ({"SG_REDIS_URL": "redis://a:1,b:2"}, "cluster or sentinel mode"),
        ({"SG_REDIS_MODE": "cluster", "SG_REDIS_URL": "redis://a:1/2"}, "only database 0"),
        ({"SG_REDIS_MODE": "sentinel"}, "SG_REDIS_SENTINEL_MASTER is required"),
        ({"SG_REDIS_SENTINEL_MASTER": "main"}, "for --redis-mode sentinel only"),
        ({"SG_REDIS_MODE": "replicated"}, "must be one of standalone, cluster, sentinel"),
    ])
    def test_contradictions_are_refused_naming_the_option(self, env: dict[str, str], needle: str) -> None:
        with pytest.raises(ConfigError, match=needle):
            parse_settings([], {**MINIMAL, **env})

    def test_the_sentinels_password_is_no_flag(self) -> None:
        with pytest.raises(ConfigError, match="--redis-sentinel-password is no flag: set SG_REDIS_SENTINEL_PASSWORD"):
            parse_settings(["--redis-sentinel-password", "x"], MINIMAL)


class TestBadValuesFailFast:
    @pytest.mark.parametrize("env, needle", [
        ({"SG_STREAMS": ""}, "--streams / SG_STREAMS"),
        ({"SG_STREAMS": "a,a"}, "lists a stream twice"),
        ({"SG_GROUP": " "}, "--group / SG_GROUP"),
        ({"SG_REDIS_URL": "http://x"}, "--redis-url / SG_REDIS_URL"),
        ({"SG_REDIS_URL": "redis://h:99999"}, "invalid port"),
        ({"SG_REDIS_URL": "redis://h/x"}, "database"),
        ({"SG_APP_URL": "localhost:8080"}, "--app-url / SG_APP_URL"),
        ({"SG_START_FROM": "yesterday"}, "--start-from / SG_START_FROM"),
        ({"SG_START_FROM": "2024-01-01T00:00:00"}, "no time zone"),
        ({"SG_MAX_IN_FLIGHT": "0"}, "--max-in-flight / SG_MAX_IN_FLIGHT"),
        ({"SG_MAX_IN_FLIGHT": "many"}, "whole number"),
        ({"SG_REQUEST_TIMEOUT": "5 minutes"}, "--request-timeout / SG_REQUEST_TIMEOUT"),
        ({"SG_REQUEST_TIMEOUT": "0s"}, "greater than zero"),
        ({"SG_REQUEST_TIMEOUT": "30"}, "add a unit"),
        ({"SG_RETRY_JITTER": "1.5"}, "between 0.0 and 1.0"),
        ({"SG_RETRY_MULTIPLIER": "0.5"}, "at least 1.0"),
        ({"SG_RETRY_INITIAL": "10s", "SG_RETRY_MAX": "1s"}, "larger than --retry-max"),
        ({"SG_DEAD_LETTER_STATUSES": "200"}, "not an HTTP error status"),
        ({"SG_DEAD_LETTER_STREAM": "dead"}, "must contain {stream}"),
        ({"SG_BODY": "xml"}, "one of json, raw"),
        ({"SG_BODY": "raw"}, "--body-field / SG_BODY_FIELD is required"),
        ({"SG_HEALTH_PORT": "70000"}, "TCP port"),
        ({"SG_LOG_LEVEL": "loud"}, "--log-level"),
        ({"SG_REDIS_TLS_CERT_FILE": "/c.pem"}, "go together"),
        ({"SG_BATCH_SIZE": "64", "SG_MAX_IN_FLIGHT": "32"}, "larger than --max-in-flight"),
        ({"SG_BATCH_SIZE": "8", "SG_BODY": "raw", "SG_BODY_FIELD": "p"}, "needs --body json"),
        ({"SG_BATCH_WAIT": "-1s"}, "--batch-wait / SG_BATCH_WAIT"),
    ])
    def test_a_bad_value_is_reported_with_its_option(self, env: dict[str, str], needle: str) -> None:
        with pytest.raises(ConfigError, match=None) as info:
            parse_settings([], {**MINIMAL, **env})
        assert needle in str(info.value)
        assert "\n" not in str(info.value)

    def test_missing_required_options_are_named(self) -> None:
        with pytest.raises(ConfigError, match="--group / SG_GROUP is required"):
            parse_settings([], {"SG_STREAMS": "a"})
        with pytest.raises(ConfigError, match="--streams / SG_STREAMS is required"):
            parse_settings([], {"SG_GROUP": "g"})

    def test_a_bad_redis_url_never_echoes_its_password(self) -> None:
        with pytest.raises(ConfigError) as info:
            parse_settings([], {**MINIMAL, "SG_REDIS_URL": "redis://u:hunter2@h:notaport/0"})
        assert "hunter2" not in str(info.value)
        assert hide_url_passwords("rediss://u:hunter2@h:6380/1") == "rediss://u:***@h:6380/1"
        assert hide_url_passwords("redis://h:6379/0") == "redis://h:6379/0"

    def test_the_command_exits_2_with_one_line_naming_the_option(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "streamgroup_sidecar", "--streams", "s", "--group", "g",
             "--max-in-flight", "-3"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines == ["streamgroup-sidecar: invalid --max-in-flight / SG_MAX_IN_FLIGHT "
                         "(from --max-in-flight='-3'): must be at least 1"]


    def test_a_dead_letter_key_outside_its_sources_cluster_slot_also_exits_2_naming_both_slots(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "streamgroup_sidecar", "--streams", "orders", "--group", "g", "--redis-mode",
             "cluster", "--redis-url", "redis://127.0.0.1:1", "--dead-letter-stream", "dlq:{stream}"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("streamgroup-sidecar: ") and "'dlq:orders'" in line and "slot" in line


class TestDocumentation:
    def test_every_option_is_in_the_readme_table(self) -> None:
        readme = (REPO / "README.md").read_text()
        assert options_markdown() in readme, "regenerate with: python -m streamgroup_sidecar.config"

    def test_every_option_has_a_unique_flag_and_variable(self) -> None:
        assert len({o.env for o in OPTIONS}) == len(OPTIONS)
        assert all(o.env.startswith("SG_") and o.help for o in OPTIONS)
