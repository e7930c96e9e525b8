"""The one exception type for user-facing problems.

A `LaminiError` carries a single line that names the problem and the fix. The CLI
prints it as `Error: ...` and exits non-zero; it never shows a traceback for it.
"""


class LaminiError(Exception):
    """A problem the user can fix: bad input, missing file, no network..."""

    exit_code = 1
