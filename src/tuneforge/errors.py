"""The one exception type for user mistakes: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad file, bad recipe key, unreachable model).

    The message must say where (file, line, field), what was expected and how to fix it.
    """


class RowError(Exception):
    """One data row is unusable: `field` names the part of the row (or None for the whole row).

    The data pipeline adds the file and line; with `data.skip_invalid` the row is rejected and
    counted instead of stopping the preparation.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
