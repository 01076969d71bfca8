"""The exception and warning types for bad user input.

Any layer raises :class:`InputError` for a problem with what the user gave (a file, an option,
a selection) or with where the output should go (an unwritable folder, a full disk); the CLI prints
its one-line message and exits with status 2, with no traceback. :class:`InputWarning` is input read
with a caveat: the CLI prints it as one line and goes on.
"""


class InputError(Exception):
    """Bad input: the message names the file (when there is one) and the problem, on one line."""

    def __init__(self, problem: str, path=None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputWarning(UserWarning):
    """Input read despite a flaw (e.g. an MRC header without its ID string); one line naming the file."""

    def __init__(self, problem: str, path=None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
