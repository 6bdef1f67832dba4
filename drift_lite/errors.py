"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (file, recipe, flag): shown as one line, never a traceback."""
