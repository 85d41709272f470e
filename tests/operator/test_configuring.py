"""The operator's settings: flags, SG_OPERATOR_ variables, defaults, bad values; finding a cluster to talk to."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streamgroup_operator.authenticating import TOKEN_FILE, Found, NoCluster, load, locate
from streamgroup_operator.config import OPTIONS, ConfigError, KubeSettings, options_markdown, parse_settings

REPO = Path(__file__).resolve().parents[2]


class TestSources:
    def test_without_flags_or_variables_every_setting_has_its_default(self) -> None:
        settings = parse_settings([], {})
        assert settings.watch.namespaces == ()
        assert settings.watch.resync_interval == 10.0 and settings.watch.consumer_idle_limit == 300.0
        assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8080)
        assert settings.kube == KubeSettings(None, None)
        assert (settings.logs.level, settings.logs.format) == ("info", "json")
        assert settings.events.repeat_interval == 60.0
        assert settings.sidecar.image == "streamgroup/streamgroup:0.1.0-sidecar"

    def test_each_flag_has_its_variable_as_a_fallback(self) -> None:
        settings = parse_settings([], {
            "SG_OPERATOR_NAMESPACES": "team-a, team-b,,team-a", "SG_OPERATOR_KUBECONFIG": "/k/config",
            "SG_OPERATOR_CONTEXT": "staging", "SG_OPERATOR_HOST": "127.0.0.1", "SG_OPERATOR_PORT": "9090",
            "SG_OPERATOR_RESYNC_INTERVAL": "2.5", "SG_OPERATOR_LOG_LEVEL": "DEBUG", "SG_OPERATOR_LOG_FORMAT": "text",
            "SG_OPERATOR_EVENT_REPEAT_INTERVAL": "5m", "SG_OPERATOR_SIDECAR_IMAGE_PULL_POLICY": "Always",
        })
        assert settings.watch.namespaces == ("team-a", "team-b")
        assert settings.kube == KubeSettings("/k/config", "staging")
        assert (settings.server.host, settings.server.port) == ("127.0.0.1", 9090)
        assert settings.watch.resync_interval == 2.5
        assert (settings.logs.level, settings.logs.format) == ("debug", "text")
        assert settings.events.repeat_interval == 300.0
        assert settings.sidecar.image_pull_policy == "Always"

    def test_flags_win_over_the_variables(self) -> None:
        settings = parse_settings(["--namespaces", "mine", "--port", "0", "--resync-interval", "1m", "--context", "c2"],
                                  {"SG_OPERATOR_NAMESPACES": "theirs", "SG_OPERATOR_PORT": "9090",
                                   "SG_OPERATOR_RESYNC_INTERVAL": "30", "SG_OPERATOR_CONTEXT": "c1"})
        assert settings.watch.namespaces == ("mine",)
        assert settings.server.port == 0
        assert settings.watch.resync_interval == 60.0
        assert settings.kube.context == "c2"

    def test_intervals_take_a_duration_with_a_unit_or_seconds_as_before(self) -> None:
        assert parse_settings(["--consumer-idle-limit", "5m"], {}).watch.consumer_idle_limit == 300.0
        assert parse_settings(["--consumer-idle-limit", "45"], {}).watch.consumer_idle_limit == 45.0
        assert parse_settings(["--resync-interval", "500ms"], {}).watch.resync_interval == 0.5


class TestBadValues:
    @pytest.mark.parametrize("argv, environ, named", [
        (["--port", "http"], {}, "--port / SG_OPERATOR_PORT (from --port='http')"),
        ([], {"SG_OPERATOR_PORT": "70000"}, "--port / SG_OPERATOR_PORT (from SG_OPERATOR_PORT='70000')"),
        ([], {"SG_OPERATOR_RESYNC_INTERVAL": "soon"}, "--resync-interval / SG_OPERATOR_RESYNC_INTERVAL"),
        (["--resync-interval", "0"], {}, "must be greater than zero"),
        (["--log-format", "xml"], {}, "expected json or text"),
        (["--log-level", "loud"], {}, "expected debug, info, warning or error"),
        ([], {"SG_OPERATOR_SIDECAR_IMAGE_PULL_POLICY": "Sometimes"}, "expected Always, IfNotPresent or Never"),
        (["--host", " "], {}, "--host / SG_OPERATOR_HOST"),
    ])
    def test_a_bad_value_is_refused_naming_the_flag_and_the_variable(
        self, argv: list[str], environ: dict[str, str], named: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            parse_settings(argv, environ)
        assert named in str(info.value)
        assert "\n" not in str(info.value)


def exists_only(*paths: str) -> Callable[[str], bool]:
    return lambda path: path in paths


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOME": "/home/op"}


class TestLocatingTheCluster:
    def test_in_a_pod_the_service_account_is_used(self) -> None:
        assert locate(KubeSettings(), IN_CLUSTER, exists_only(TOKEN_FILE)) == Found(None)

    def test_outside_a_cluster_kubeconfig_then_the_home_kubeconfig(self) -> None:
        home = {"HOME": "/home/op"}
        assert locate(KubeSettings(), {**home, "KUBECONFIG": "/a:/b"}, exists_only("/b")) == Found("/a:/b")
        assert locate(KubeSettings(), home, exists_only("/home/op/.kube/config")) == Found(
            "/home/op/.kube/config")

    def test_a_given_kubeconfig_or_context_wins_even_in_a_pod(self) -> None:
        exists = exists_only(TOKEN_FILE, "/k", "/home/op/.kube/config")
        assert locate(KubeSettings("/k", "c"), IN_CLUSTER, exists) == Found("/k", "c")
        assert locate(KubeSettings(None, "c"), IN_CLUSTER, exists) == Found(
            "/home/op/.kube/config", "c")

    def test_with_nothing_to_use_the_message_says_what_was_looked_for(self) -> None:
        with pytest.raises(NoCluster) as info:
            locate(KubeSettings(), {"HOME": "/root"}, exists_only())
        assert str(info.value) == ("no Kubernetes configuration: not in a cluster (KUBERNETES_SERVICE_HOST unset) "
                                   "and no kubeconfig at /root/.kube/config (KUBECONFIG unset); use --kubeconfig")

    def test_a_pod_without_its_token_and_a_kubeconfig_variable_naming_nothing_are_both_told(self) -> None:
        with pytest.raises(NoCluster) as info:
            locate(KubeSettings(), {**IN_CLUSTER, "KUBECONFIG": "/gone"}, exists_only())
        assert str(info.value) == (f"no Kubernetes configuration: not in a cluster (no service account token at "
                                   f"{TOKEN_FILE}) and no kubeconfig at /gone (from KUBECONFIG); use --kubeconfig")

    def test_a_given_kubeconfig_that_does_not_exist_is_named(self) -> None:
        with pytest.raises(NoCluster) as info:
            locate(KubeSettings("~/missing"), {"HOME": "/home/op"}, exists_only())
        assert str(info.value) == "no kubeconfig at /home/op/missing (--kubeconfig)"

    def test_a_kubeconfig_that_cannot_be_used_is_refused_in_one_line(self, tmp_path: Path) -> None:
        config = tmp_path / "config"
        config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
        with pytest.raises(NoCluster) as info:
            load(Found(str(config), "staging"))
        message = str(info.value)
        assert message.startswith(f"cannot use the kubeconfig {config}, context staging: ") and "\n" not in message


class TestCommand:
    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamgroup_operator", *args], capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-home", **env})

    def test_help_prints_the_usage_and_every_flag_and_exits_0(self) -> None:
        result = self.run("--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: streamgroup-operator")
        for option in OPTIONS:
            assert option.flag in result.stdout and option.env in result.stdout

    def test_without_any_cluster_configuration_it_exits_2_with_one_line(self) -> None:
        result = self.run()
        assert result.returncode == 2
        assert result.stderr == ("streamgroup-operator: no Kubernetes configuration: not in a cluster "
                                 "(KUBERNETES_SERVICE_HOST unset) and no kubeconfig at /nonexistent-home/.kube/config "
                                 "(KUBECONFIG unset); use --kubeconfig\n")

    def test_a_bad_value_exits_2_with_one_line_before_looking_for_a_cluster(self) -> None:
        result = self.run(SG_OPERATOR_RESYNC_INTERVAL="often")
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("streamgroup-operator: invalid --resync-interval / SG_OPERATOR_RESYNC_INTERVAL")


class TestDocumentation:
    def test_every_setting_is_in_the_readme_table(self) -> None:
        readme = (REPO / "README.md").read_text()
        assert options_markdown() in readme, "regenerate with: bash hack/update-readme.sh"

    def test_every_setting_has_a_unique_flag_and_variable(self) -> None:
        assert len({o.env for o in OPTIONS}) == len({o.flag for o in OPTIONS}) == len(OPTIONS)
        assert all(o.env.startswith("SG_OPERATOR_") and o.help for o in OPTIONS)
