"""The one exception type the CLI turns into a one-line error message."""


class DiffrepError(Exception):
    """Bad input or state, with a message that names the problem and the fix."""
