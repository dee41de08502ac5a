"""The one exception type for errors a user can cause (paths, layouts, YAML, checkpoints, flags)."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints ``str(err)`` on one line and exits with code 2.

    Messages name the file/field/flag, what was found and what was expected.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
