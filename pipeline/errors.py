"""The one error type every step raises for bad input, so the task layer can print one line and exit."""


class PipelineError(Exception):
    """A problem the user can fix: `problem` says what went wrong, `fix` says what to do."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem
