"""Keeping secrets out of what people see: logs, status, events, error lines.

Passwords reach Streamgroup only through Secrets and environment variables, but they can still
show up inside a Redis URL someone typed, or inside an error message a library built from one.
Every part scrubs text with these functions before it leaves the process.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*):[^/@\s]*@", re.IGNORECASE)


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def url_password(url: str) -> str | None:
    """The password inside ``url``, percent-decoded, if it has one."""
    try:
        raw = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(raw) if raw else None


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without URL passwords, nor any of ``secrets`` (each also in its percent-encoded form)."""
    text = hide_url_passwords(text)
    # Longest first, so that a secret containing another is masked whole. Any length is masked: a very
    # short password garbles the message, which beats showing it.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return text
