"""The one exception type for mistakes a user can fix: the CLI prints its message as one line, exit code 2."""


class UserError(Exception):
    """Bad input or a bad request: what was wrong, where, and what to do, in one line."""
