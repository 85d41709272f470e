"""Inputs nobody thought of, for the sidecar's options (Hypothesis; profiles in tests/conftest.py).

Flags and ``SG_`` variables come from people and from the operator's Deployment, as any bytes the system
allows. Whatever they are, ``streamgroup-sidecar`` either starts or exits with status 2 and one line that
names the option (never a traceback, never usage text), and that line never shows a password: not
``SG_REDIS_PASSWORD``, not the sentinels' password, not the password in a Redis or app URL, not a piece of one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from streamgroup_sidecar.__main__ import main
from streamgroup_sidecar.config import OPTIONS, ConfigError, Option, Settings, parse_settings
from streamgroup_sidecar.running import Sidecar

MINIMAL = {"SG_STREAMS": "orders", "SG_GROUP": "billing", "SG_CONSUMER": "c-1", "SG_HEALTH_PORT": "0"}
BY_NAME = {option.name: option for option in OPTIONS}
NAMES_AN_OPTION = re.compile(r"--[a-z][a-z-]*|SG_[A-Z_]+")
# Every character of a password is next to a marker that no message has, so that a piece shown is seen.
MARKERS = "§µ¤"

# Values close to what each option takes, and their near misses.
PLAUSIBLE = sorted({option.default for option in OPTIONS if option.default} | {
    "", " ", "0", "1", "-1", "64", "65536", "1.5", "nan", "inf", "1e309", "10", "0s", "1ms", "30", "-1s", "1h30m",
    "$", "0-0", "1700000000000-5", "2024-05-01T12:00:00Z", "2024-13-01T00:00:00Z", "2024-05-01T12:00:00",
    "redis://r:6379/0", "rediss://r:6380/1", "redis://a:1,b:2", "redis://r:6379/x", "redis://r:99999",
    "redis://r/0?socket_timeout=abc", "redis://r/0?ssl_cert_reqs=none", "unix:///tmp/r.sock?db=x", "redis://",
    "http://app:8080/", "https://[::1]:8443/x", "http://[::1", "localhost:8080", "standalone", "cluster",
    "sentinel", "json", "raw", "pyreqwest", "aiohttp", "DEBUG", "exit", "{stream}", "dlq:{stream}", "400,422",
    "200", "a,a", "a, b", "/c.pem",
})


def as_the_system_gives_it(raw: bytes) -> str:
    """Environment and argv are bytes without NUL; Python decodes them with surrogateescape."""
    return os.fsdecode(raw.replace(b"\0", b""))


values = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.text(max_size=16),
    st.binary(max_size=16).map(as_the_system_gives_it),
    st.tuples(st.sampled_from(PLAUSIBLE), st.text(max_size=3)).map("".join),
).map(lambda value: value.replace("\0", ""))
unknown_tokens = st.one_of(
    st.sampled_from(["--nope", "--redis", "--stream", "--redis-password", "--redis-sentinel-password", "-x", "--",
                     "orders", "--redis-password=hunter2", "-", "--max-in-flight"]),
    st.text(max_size=8).map(lambda token: token.replace("\0", "")).filter(lambda token: token not in ("-h", "--help")),
)


@st.composite
def command_lines(draw: st.DrawFn, secrets: bool = False) -> tuple[list[str], dict[str, str]]:
    """Some options by flag (``--x v`` or ``--x=v``) or variable, the rest from a valid minimum; some noise."""
    environ = {name: value for name, value in MINIMAL.items() if draw(st.integers(0, 9))}
    argv: list[str] = []
    for option in draw(st.lists(st.sampled_from(OPTIONS), max_size=4)):
        if option.secret and secrets:
            continue  # the secrets test places those
        # With secrets placed, the other values have none of their markers: a marker shown is a secret shown.
        value = draw(values.filter(lambda text: not any(mark in text for mark in MARKERS)) if secrets else values)
        where = "env" if option.env_only else draw(st.sampled_from(["env", "flag", "flag="]))
        if where == "env":
            environ[option.env] = value
        elif where == "flag":
            argv += [option.flag, value]
        else:
            argv.append(f"{option.flag}={value}")
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        argv.insert(draw(st.integers(0, len(argv))), draw(unknown_tokens))
    return argv, environ


def check_refusal(message: str) -> None:
    assert message and len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, message
    assert NAMES_AN_OPTION.search(message), message
    assert "Traceback" not in message and "usage:" not in message


def parse(argv: list[str], environ: dict[str, str]) -> Settings | str:
    """The settings, or the message of the refusal (anything else fails the test)."""
    try:
        return parse_settings(argv, environ)
    except ConfigError as exc:
        return str(exc)


@contextlib.contextmanager
def environment(environ: dict[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, environ, clear=True):
        yield


class TestAnyCommandLine:
    @given(command_lines())
    def test_any_flags_and_variables_give_settings_or_one_line_naming_an_option(
        self, command: tuple[list[str], dict[str, str]],
    ) -> None:
        result = parse(*command)
        if isinstance(result, str):
            check_refusal(result)

    @given(command_lines())
    def test_the_command_starts_or_exits_2_with_that_one_line_and_never_a_traceback(
        self, command: tuple[list[str], dict[str, str]],
    ) -> None:
        argv, environ = command
        with environment(environ):
            result = parse(argv, environ)
            if isinstance(result, Settings):
                # What main does next, short of running: building the sidecar may refuse it too (exit 2).
                try:
                    Sidecar(result)
                except ConfigError as exc:
                    check_refusal(str(exc))
                return
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                code = main(argv)
        assert code == 2
        assert stderr.getvalue() == f"streamgroup-sidecar: {result}\n"

    def test_a_flag_argparse_cannot_place_is_one_line_not_its_usage_text(self) -> None:
        # Found by fuzzing: an unknown flag, a flag without its value or a stray argument made argparse print
        # its usage (dozens of lines) and raise SystemExit; "--stream" was taken for --streams (abbreviation).
        for argv, line in [
            (["--nope"], "unknown option --nope (see --help)"),
            (["--stream", "orders"], "unknown option --stream (see --help)"),
            (["--group"], "--group needs a value: --name VALUE or --name=VALUE (see --help)"),
            (["--group", "g", "orders"], "unexpected argument 3, after the value of --group: options are "
                                         "--name VALUE or --name=VALUE (see --help)"),
        ]:
            stderr = io.StringIO()
            with environment(MINIMAL), contextlib.redirect_stderr(stderr):
                assert main(argv) == 2
            assert stderr.getvalue() == f"streamgroup-sidecar: {line}\n"

    def test_a_value_that_is_not_utf8_is_refused_not_a_traceback(self) -> None:
        # Found while writing the strategies: bytes that are not UTF-8 reach Python as lone surrogates, which
        # passed the parser and made building the sidecar raise UnicodeEncodeError (stream, group, consumer...).
        for name in ("SG_STREAMS", "SG_GROUP", "SG_CONSUMER", "SG_ORDERING_FIELD", "SG_CLOUDEVENTS_TYPE"):
            result = parse([], {**MINIMAL, name: os.fsdecode(b"a\xff")})
            assert isinstance(result, str) and result.endswith(f"(from {name}): not UTF-8 text"), result

    def test_a_redis_url_option_redis_py_cannot_read_is_refused_not_a_traceback(self) -> None:
        # Found while writing the strategies: redis-py raised ValueError when the sidecar was built.
        for url in ("redis://r:6379/0?socket_timeout=abc", "unix:///tmp/r.sock?db=x"):
            result = parse([], {**MINIMAL, "SG_REDIS_URL": url})
            assert isinstance(result, str) and "has a query option redis-py cannot read" in result, result

    @given(st.sampled_from(OPTIONS), values)
    def test_one_bad_value_is_refused_naming_its_option(self, option: Option, value: str) -> None:
        environ = {**MINIMAL, option.env: value}
        result = parse([], environ)
        if isinstance(result, str):
            check_refusal(result)
            assert option.flag in result or option.env in result, result


password_pieces = st.text(alphabet="ab:/?#@%[] ℀﹫\\'\"\n", max_size=8)


@st.composite
def passwords(draw: st.DrawFn) -> str:
    marks = st.sampled_from(MARKERS)
    return draw(marks) + "".join(piece + draw(marks) for piece in draw(password_pieces))


def percent_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def shown(message: str) -> set[str]:
    """The markers found in ``message``, as they are, escaped by repr() or percent-encoded."""
    forms = {mark: (mark, mark.encode("unicode_escape").decode(), percent_encoded(mark)) for mark in MARKERS}
    return {mark for mark, spelled in forms.items() if any(form in message.upper() or form in message
                                                           for form in spelled)}


@st.composite
def secrets_placed(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    argv, environ = draw(command_lines(secrets=True))
    host = draw(st.sampled_from(["r", "r:6379", "r:x", "r-0:1,r-1:2", "", "[::1", "r/0"]))
    tail = draw(st.sampled_from(["", "/0", "/x", "/0?socket_timeout=x", "/0?ssl_ca_certs=x", "?db=x"]))
    scheme = draw(st.sampled_from(["redis", "rediss", "http", "unix"]))
    password = draw(passwords())
    quoted = draw(st.booleans())
    secret_in_url = percent_encoded(password) if quoted else password
    url = f"{scheme}://{draw(st.sampled_from(['', 'user']))}:{secret_in_url}@{host}{tail}"
    where = draw(st.sampled_from(["env", "flag", "flag="]))
    if where == "env":
        environ["SG_REDIS_URL"] = url
    elif where == "flag":
        argv += ["--redis-url", url]
    else:
        argv.append(f"--redis-url={url}")
    if draw(st.booleans()):
        environ["SG_REDIS_PASSWORD"] = draw(passwords())
    if draw(st.booleans()):
        environ["SG_REDIS_SENTINEL_PASSWORD"] = draw(passwords())
    if draw(st.booleans()):
        environ["SG_APP_URL"] = f"http://user:{draw(passwords())}@{host}{tail}"
    if draw(st.booleans()):
        # Passwords where the sidecar has no flag for them, as someone might try.
        argv.append(draw(st.sampled_from(["--redis-password", "--redis-sentinel-password"])))
        argv.insert(len(argv) if draw(st.booleans()) else 0, draw(passwords()))
    return argv, environ


class TestSecrets:
    def test_a_password_after_an_environment_only_option_is_not_echoed(self) -> None:
        # Found by fuzzing: argparse's error listed the arguments it could not place: "--redis-password hunter2".
        result = parse(["--redis-password", "hunter2"], MINIMAL)
        assert result == ("--redis-password is no flag: set SG_REDIS_PASSWORD instead (the environment only, "
                          "so that the password never shows in the process list)")

    def test_a_url_password_with_a_character_urllib_refuses_is_not_echoed(self) -> None:
        # Found by fuzzing: urllib's error about a host part with a character such as ℀ (NFKC "a/c") shows the
        # host part whole, user and password included, and the message passed it on.
        for mode, url in (("standalone", "redis://u:pa℀ss@r:6379/0"), ("cluster", "redis://u:pa℀ss@r-0,r-1")):
            result = parse([], {**MINIMAL, "SG_REDIS_MODE": mode, "SG_REDIS_URL": url})
            assert isinstance(result, str) and "pa" not in result.replace("password", ""), result
        result = parse([], {**MINIMAL, "SG_APP_URL": "http://u:pa℀ss@app/"})
        assert isinstance(result, str) and "pa℀ss" not in result and "***@app/" in result, result

    def test_a_piece_of_a_password_with_an_unescaped_slash_is_not_shown_as_a_host(self) -> None:
        # Found while writing the strategies: in cluster mode "redis://:pa/ss@r" is the host list ":pa", and the
        # error named the address it could not read: ':pa'.
        result = parse([], {**MINIMAL, "SG_REDIS_MODE": "cluster", "SG_REDIS_URL": "redis://:pa/ss@r"})
        assert result == ("invalid --redis-url / SG_REDIS_URL: has an invalid port in address number 1 of its "
                          "list of hosts")

    @given(secrets_placed())
    def test_no_piece_of_a_password_is_ever_shown(self, command: tuple[list[str], dict[str, str]]) -> None:
        argv, environ = command
        result = parse(argv, environ)
        if isinstance(result, str):
            check_refusal(result)
            assert not shown(result), result
            return
        try:
            Sidecar(result)
        except ConfigError as exc:
            assert not shown(str(exc)), str(exc)
