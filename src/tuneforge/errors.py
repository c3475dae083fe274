"""The one exception type for user mistakes: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad file, bad recipe key, unreachable model).

    The message must say where (file, line, field), what was expected and how to fix it.
    """
