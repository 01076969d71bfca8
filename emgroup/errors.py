"""The one exception type for bad user input.

Any layer raises :class:`InputError` for a problem with what the user gave (a file, an option,
a selection); the CLI prints its one-line message and exits with status 2, with no traceback.
"""


class InputError(Exception):
    """Bad input: the message names the file (when there is one) and the problem, on one line."""

    def __init__(self, problem: str, path=None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
