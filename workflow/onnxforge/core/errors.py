"""Errors a user can act on: each names the file or key, what was expected and what to do."""


class InputError(Exception):
    """Bad input (checkpoint, config, source): the message says what and where."""


class ParityGateFailed(Exception):
    """A parity gate did not hold; the report has been written for reading."""
