"""The one exception type for bad input from a user.

Anything that a person can get wrong (a level tuple, a path, a token file) raises `InputError` with a message that
names the problem and the fix. The CLI prints that message on one line and exits with status 2; library callers can
catch it as the `ValueError` it is.
"""


class InputError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""
