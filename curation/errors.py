"""The one exception type the CLI turns into a single clear line on stderr."""


class CurationError(Exception):
    """A user-facing error: bad arguments, config or catalog. The message is printed as is."""
