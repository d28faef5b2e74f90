"""Errors the zoo raises for bad input: each says what was wrong and how to fix it."""

import difflib


class ZooError(Exception):
    """Base class: a user-facing error whose message is the whole explanation."""


class UnknownNameError(ZooError, KeyError):
    """An unknown model, preset or dataset name."""

    def __str__(self):  # KeyError would wrap the message in quotes.
        return self.args[0] if self.args else ""


class DataUnavailableError(ZooError):
    """The dataset cannot be found locally and cannot be downloaded."""


class DataFormatError(ZooError, ValueError):
    """A local data file is missing, truncated or corrupt."""


class InputShapeError(ZooError, ValueError):
    """Images or codes do not have the shape the model was built for."""


def unknown_name(kind, name, known):
    """Return an UnknownNameError for `name` that lists close matches, or all names."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    if close:
        hint = "Did you mean: " + ", ".join(close) + "?"
    else:
        hint = "Known {}s: {}.".format(kind, ", ".join(known))
    return UnknownNameError("Unknown {} {!r}. {}".format(kind, name, hint))
