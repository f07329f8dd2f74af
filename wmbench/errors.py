"""Error types. A :class:`UserError` is bad input: the CLI prints its message on one line and exits 2."""


class UserError(ValueError):
    """Bad input from the user (unknown name, malformed option, missing data).

    The message must say what was wrong and what is accepted.
    """


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TaskTimeout(RuntimeError):
    """A task (a cell or an artifact build) ran past ``--cell-timeout``."""


class CorruptArtifact(RuntimeError):
    """A cached artifact failed its checksum or could not be loaded."""
