"""The one exception type for errors a user can cause (paths, layouts, YAML, checkpoints, flags)."""

import re


class UserError(Exception):
    """A problem with the user's input. The CLI prints ``str(err)`` on one line and exits with code 2.

    Messages name the file/field/flag, what was found and what was expected.
    """

    def __init__(self, message: str):
        text = str(message)
        if text.startswith("Caught ") and "Original Traceback" in text and _REPR in text:
            # Raised in a DataLoader worker and re-raised by torch as ``UserError("Caught UserError in DataLoader
            # worker ... Original Traceback ...: <message>")``: keep the message, not the worker's traceback.
            text = text[text.rindex(_REPR) + len(_REPR) :]
        super().__init__(" ".join(text.split()))  # always one line


_REPR = f"{UserError.__module__}.{UserError.__qualname__}: "


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_failure_reason(err: BaseException, limit: int = 160) -> str:
    """The useful part of a ``torch.load(..., weights_only=True)`` failure, on one line.

    torch wraps the reason (``Unsupported global: GLOBAL x.Y``, ``unsupported GLOBAL posix.system``, ...) in
    boilerplate that suggests turning the weights-only loader off; keep only the reason.
    """
    text = _ANSI.sub("", str(err)).strip()
    if not text:
        return type(err).__name__
    if text.startswith("Weights only load failed"):
        marker = "WeightsUnpickler error:"
        rest = text.split(marker, 1)[1] if marker in text else text.partition("\n")[2]
        skip = ("Check the documentation", "(1)", "(2)", "Please file an issue")
        reason = next((ln.strip() for ln in rest.splitlines() if ln.strip() and not ln.strip().startswith(skip)), "")
        reason = reason.split(". Please use `torch.serialization")[0].rstrip(".")
        text = f"refused by weights_only=True: {reason}" if reason else "refused by weights_only=True"
    else:
        text = " ".join(text.split()).split(". ")[0].rstrip(".")
    return text[:limit]
