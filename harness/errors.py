"""Exceptions that the CLI turns into one line on stderr and an exit code.

Library code raises these with a message that names the bad value and the valid choices; only
``harness.cli`` prints them.
"""


class UsageError(ValueError):
    """Bad input from the user (unknown name, missing device, bad path). CLI exit code 2."""


class ResultsError(UsageError):
    """A results file that cannot be read: truncated, malformed, wrong schema. Names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
