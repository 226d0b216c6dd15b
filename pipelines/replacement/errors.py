"""The replacement generator's errors a user fixes from the message alone (light to import: the command
line checks for them after any error)."""


class DatabaseNotReady(RuntimeError):
    """The replacement pairs cannot run on the object database as it is (absent, incomplete, empty)."""
