class KilnError(Exception):
    """A user-facing error whose message is one line."""
