"""The one exception type users can cause.

Every error a user can trigger (a malformed config, an unknown space or device, a mismatched
checkpoint, a corrupt run folder) is raised as a :class:`NasError` with one message that says what is
wrong and how to fix it. The CLI prints that line and exits with code 2. This module has no
dependencies so that every package may raise it.
"""


class NasError(Exception):
    """A problem with the user's input, stated in one line."""


class ConfigError(NasError, ValueError):
    """A subnet configuration or encoding that the search space does not accept."""


class CheckpointError(NasError):
    """A checkpoint file that cannot be read or does not fit the supernet."""


class UnknownNameError(NasError, KeyError):
    """A name (space, device, searcher, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
