"""The ``streamgroup`` command line, for the people running Streamgroup.

Every module raises :class:`CLIError` for anything the user can fix (bad input, a missing stream, a
refused trim); ``__main__`` prints it as one line and exits with status 1. Keeping it here, rather than
in one of the activity modules, lets them all raise it without importing each other.
"""


class CLIError(Exception):
    """A user-facing error: printed as one line (never with a password in it), exit status 1."""
