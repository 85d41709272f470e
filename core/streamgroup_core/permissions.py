"""Redis refusing a command to this ACL user (NOPERM), said plainly: which command, on which keys.

Redis words a refusal three ways: ``NOPERM User u has no permissions to run the 'xack' command``
(or ``... to access one of the keys used as arguments``) for a command sent directly; redis-py
rewrites that inside a pipeline (``Command # 1 (XACK ...) of pipeline caused error``, losing the
reason); and a script that calls a refused command fails with ``The user executing the script
can't run this command or subcommand``. None of them says which key of the caller's, and only the
caller knows what it was doing: :func:`naming` wraps a call so that a refusal becomes a
:class:`PermissionDenied` that names the command and keys, and tells the reader where the rules
come from (``streamgroup acl``). It stays a ``RedisError``, so whatever retried the call retries
it: a permission granted later is picked up by the next attempt, and nothing pending is lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from redis.exceptions import NoPermissionError, ResponseError

HINT = "grant it to this Redis user (`streamgroup acl` prints the rules each part needs)"

_SCRIPT_REFUSED = "can't run this command"


def is_denied(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command or key to the user (ACL), in any of its forms."""
    if isinstance(exc, NoPermissionError):
        return True
    if isinstance(exc, ResponseError):
        text = str(exc)
        return text.startswith("NOPERM") or _SCRIPT_REFUSED in text or "no permissions to" in text.lower()
    return False


class PermissionDenied(NoPermissionError):
    """Redis refused ``command`` on ``keys`` to this user."""

    def __init__(self, command: str, keys: Sequence[str], reason: str) -> None:
        self.command = command
        self.keys = tuple(keys)
        self.reason = reason
        where = f" on {', '.join(self.keys)}" if self.keys else ""
        super().__init__(f"NOPERM: Redis refused {command}{where} ({reason}); {HINT}")

    @property
    def summary(self) -> str:
        """``XACK on orders``: what ``/readyz`` and conditions name."""
        return f"{self.command} on {', '.join(self.keys)}" if self.keys else self.command


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "of pipeline caused error" in text:
        return "no permission for this command or key"  # redis-py's pipeline message lost Redis' own
    return text.split("script:")[0].rstrip(": ").strip() or type(exc).__name__


@contextmanager
def naming(command: str, *keys: str) -> Iterator[None]:
    """Turn a refusal raised inside the block into a :class:`PermissionDenied` naming ``command`` and ``keys``.

    Works around ``await`` too (``with naming("XACK", stream): await client.xack(...)``).
    """
    try:
        yield
    except PermissionDenied:
        raise
    except ResponseError as exc:
        if not is_denied(exc):
            raise
        raise PermissionDenied(command, keys, _reason(exc)) from exc
