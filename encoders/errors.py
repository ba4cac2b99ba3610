"""Errors the towers raise for input they cannot encode."""


class TowerInputError(ValueError):
    """An input a tower cannot encode (wrong shape, empty audio, empty text); the message says what it expects."""
