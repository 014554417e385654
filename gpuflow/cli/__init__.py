"""The ``gpuflow`` command: a safe expression parser and the subcommands."""


class CommandError(Exception):
    """Raised for invalid command-line input, with a message of the form "<problem>; <fix>"."""


class ExpressionError(ValueError):
    """Raised when an expression is invalid or uses something outside the language."""
