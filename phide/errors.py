"""User-facing errors: the CLI prints them as one `phide: error: ...` line and exits 2."""


class PhideError(Exception):
    """Bad input or an unusable checkpoint: a message for the user, never a traceback."""


class DraftFault(Exception):
    """The draft failed (exception, NaN, overrun). The engine drops the draft; the target goes on."""
