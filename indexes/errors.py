"""What can go wrong with an index on disk, each with a message that says what to do."""

from __future__ import annotations


class IndexProblem(Exception):
    """Base class for index problems."""


class IndexNotFoundError(IndexProblem, FileNotFoundError):
    """The folder holds no index."""


class ModelMismatchError(IndexProblem, ValueError):
    """The index was built with another model than the one asked to search or extend it."""


class IndexCorruptedError(IndexProblem, ValueError):
    """The index file does not match the checksum its manifest recorded."""


class IndexBusyError(IndexProblem, RuntimeError):
    """Another process is writing to the index."""


class ManifestDamagedError(IndexCorruptedError):
    """The manifest cannot be read; a writer rebuilds it from the metadata store, which keeps its own copy."""
