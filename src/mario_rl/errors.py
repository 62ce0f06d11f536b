"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input from a user: a wrong stage name, a missing file, a bad option.

    The CLI prints ``error: <message>`` on one line and exits with code 2; library
    callers get an ordinary ``ValueError`` subclass they can catch.
    """
