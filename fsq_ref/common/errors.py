"""The one exception type for bad input from a user.

Anything that a person can get wrong (a level tuple, a path, a token file) raises `InputError` with a message that
names the problem and the fix. The CLI prints that message on one line and exits with status 2; library callers can
catch it as the `ValueError` it is. `from_record` rebuilds a config from a checkpoint's record, so that a record
written by another version of fsq-ref is refused in those terms rather than with a TypeError.
"""

import dataclasses


class InputError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""


def from_record(cls, record: dict):
    """`cls(**record)` for a dataclass config read from a checkpoint; InputError if the record has settings `cls`
    lacks (another version of fsq-ref wrote it)."""
    unknown = sorted(set(record) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise InputError(f"the checkpoint records {cls.__name__} settings this version of fsq-ref does not have "
                         f"({', '.join(unknown)}): another version wrote it; train it again, or use that version")
    return cls(**record)
