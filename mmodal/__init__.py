"""mmodal: offline-first multimodal search and visual question answering."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmodal")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
