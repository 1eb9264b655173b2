from contextlib import contextmanager


class KilnError(Exception):
    """A user-facing error whose message is one line."""


@contextmanager
def os_error_as(message: str):
    """An OSError inside (a path that cannot be made or written) becomes a KilnError of
    `message`, its `{reason}` replaced by the system's words for it (a path in the message may
    hold braces: nothing else is formatted)."""
    try:
        yield
    except OSError as e:
        raise KilnError(message.replace("{reason}", str(e.strerror or e))) from None
