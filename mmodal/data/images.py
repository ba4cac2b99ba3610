"""Reading real-world image files safely for indexing: finding them, identifying them cheaply, decoding them.

Folders that people point an indexer at contain everything: truncated downloads, text files with a ``.jpg``
suffix, decompression bombs, CMYK scans, 16-bit PNGs, animated GIFs, rotated phone photos, broken symlinks and
symlink loops. Every function here turns such a file into an :class:`ImageSkipped` with a short human reason
(or, for the walker, an ``on_error`` report) instead of an exception the indexer has to know about, and every
image that can be decoded comes back as an upright RGB picture.

Only Pillow, numpy and the standard library are used, so this module can run in light worker processes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})

# Width × height above which an image is skipped rather than decoded: 64 megapixels is beyond any camera a
# collection is likely to hold, and decoding it already takes about 200 MB as RGB.
MAX_PIXELS: int = 64_000_000

# Modes whose samples are wider than 8 bits and need rescaling before they can be shown as RGB.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Modes with an alpha channel that Pillow can turn into straight (non-premultiplied) RGBA.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
# Premultiplied modes: their colour channels already equal the picture composited over black.
_PREMULTIPLIED_MODES = frozenset({"RGBa", "La"})
# Modes where a ``transparency`` entry in ``info`` (a PNG tRNS chunk, a GIF transparent index) means alpha.
_KEYED_TRANSPARENCY_MODES = frozenset({"1", "L", "P", "RGB"})

_HASH_DIGEST_SIZE = 16
_BROKEN_SYMLINK = "broken symlink"


class ImageSkipped(Exception):
    """A file that cannot be indexed.

    ``str(exc)`` and ``exc.reason`` are the same short human reason, for example ``"not an image"``,
    ``"truncated or corrupt image: image file is truncated"``, ``"image too large: 20000×20000 pixels
    (limit 64,000,000)"``, ``"unreadable: permission denied"``, ``"empty file"`` or ``"file vanished"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FileStat:
    """A cheap identity of a file, used to recognise unchanged files without reading them again."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class DecodedImage:
    """A decoded image, ready for an encoder, plus the identity of the bytes it came from.

    ``image`` is RGB, upright (EXIF orientation applied) and the first frame of an animation. ``width`` and
    ``height`` are the full size of the picture after EXIF rotation, even when ``draft_size`` made ``image``
    smaller. ``content_hash`` is :func:`hash_bytes` of the file's bytes.
    """

    image: Image.Image
    width: int
    height: int
    format: str | None
    content_hash: str
    size: int
    mtime_ns: int


def hash_bytes(data: bytes) -> str:
    """The content hash used to recognise identical files: hex BLAKE2b with a 16-byte digest."""
    return hashlib.blake2b(data, digest_size=_HASH_DIGEST_SIZE).hexdigest()


def _os_error_reason(path: str, exc: OSError) -> str:
    """A short human reason for an OSError raised while touching ``path``."""
    if isinstance(exc, FileNotFoundError):
        # A link whose target is gone raises the same error as a deleted file; the user fixes them differently.
        return _BROKEN_SYMLINK if os.path.islink(path) else "file vanished"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "not a file: it is a directory"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return f"unreadable: {exc.strerror or exc}"


def stat_file(path: str | os.PathLike) -> FileStat:
    """Size and modification time of ``path`` (following symlinks), without reading the file.

    Raises :class:`ImageSkipped` when the file has vanished, is a broken symlink, cannot be examined,
    or is not a regular file.
    """
    path_str = os.fspath(path)
    try:
        info = os.stat(path_str)
    except OSError as exc:
        raise ImageSkipped(_os_error_reason(path_str, exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageSkipped("not a file: it is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ImageSkipped("not a regular file")
    return FileStat(path=path_str, size=info.st_size, mtime_ns=info.st_mtime_ns)


def _read_file(path: str) -> tuple[bytes, int]:
    """The whole content of ``path`` and its modification time, taken from the same open file."""
    # O_NONBLOCK keeps a FIFO that happens to be named like an image from blocking the indexer forever;
    # it has no effect on regular files.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageSkipped(_os_error_reason(path, exc)) from exc
    try:
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise ImageSkipped("not a file: it is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise ImageSkipped("not a regular file")
            data = file.read()
    except OSError as exc:
        raise ImageSkipped(_os_error_reason(path, exc)) from exc
    return data, info.st_mtime_ns


def _too_large_reason(width: int, height: int, max_pixels: int) -> str:
    return f"image too large: {width}×{height} pixels (limit {max_pixels:,})"


def _wide_to_8bit(im: Image.Image) -> Image.Image:
    """Rescales a 16-bit, 32-bit integer or float image to an 8-bit grayscale one.

    16-bit images use their full range (65535 is white), as image viewers show them. For 32-bit integer and
    float images the meaning of the numbers is not fixed, so it is guessed from the values: floats within
    0..1 are normalised intensities, integers within 0..255 or 0..65535 are 8- or 16-bit data stored in a wider
    type, and anything else is stretched from its minimum to its maximum.
    """
    if im.mode.startswith("I;16"):
        values = np.asarray(im, dtype=np.float32) / 257.0
    else:
        values = np.asarray(im, dtype=np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            values = np.where(finite, values, 0.0).astype(np.float32)
        low, high = float(values.min()), float(values.max())
        if im.mode == "F" and low >= 0.0 and high <= 1.0:
            values = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            pass
        elif low >= 0.0 and high <= 65535.0:
            values = values / 257.0
        else:
            values = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _over_black(rgba: Image.Image) -> Image.Image:
    """Composites an RGBA image over black, the background of the project's images."""
    background = Image.new("RGB", rgba.size, (0, 0, 0))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def _to_rgb(im: Image.Image) -> Image.Image:
    """Converts a loaded image of any Pillow mode to RGB; transparent areas become black."""
    mode = im.mode
    if mode in _WIDE_MODES:
        return _wide_to_8bit(im).convert("RGB")
    if mode in _PREMULTIPLIED_MODES:
        # Taken channel by channel: Pillow's convert() would undo the premultiplication and lose the black.
        colour_bands = im.split()[:-1]
        return Image.merge("RGB", colour_bands) if mode == "RGBa" else colour_bands[0].convert("RGB")
    if mode in _ALPHA_MODES or (mode in _KEYED_TRANSPARENCY_MODES and "transparency" in im.info):
        return _over_black(im.convert("RGBA"))
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ImageSkipped(f"unsupported image mode {mode}: {exc}") from exc


def _decode(data: bytes, max_pixels: int, draft_size: int | None) -> tuple[Image.Image, int, int, str | None]:
    """Decodes ``data`` into an upright RGB image; returns it with the full upright size and the format."""
    im = Image.open(io.BytesIO(data))
    image_format = im.format
    header_width, header_height = im.size
    # Image.open only parsed the header, so a bomb is refused here before any pixel memory is allocated.
    if header_width * header_height > max_pixels:
        raise ImageSkipped(_too_large_reason(header_width, header_height, max_pixels))
    if draft_size is not None and image_format == "JPEG":
        # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale, which is several times faster for large photos.
        im.draft("RGB", (draft_size, draft_size))
    im.load()

    loaded_size = im.size
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:  # malformed EXIF metadata must not cost an otherwise good picture
        logger.warning("ignoring unreadable EXIF orientation (%s: %s)", type(exc).__name__, exc)
    quarter_turned = im.size != loaded_size
    width, height = (header_height, header_width) if quarter_turned else (header_width, header_height)

    rgb = _to_rgb(im)
    if rgb is im and getattr(im, "n_frames", 1) > 1:
        # Multi-frame images keep the whole file around for seeking; a plain copy lets those bytes be freed.
        rgb = im.copy()
    return rgb, width, height, image_format


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> DecodedImage:
    """Reads, hashes and decodes one image file.

    The file is read once; the hash and the decoded picture come from the same bytes. Images whose header
    claims more than ``max_pixels`` pixels are skipped before their pixels are decoded. Pillow's own
    decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) also applies: its warning is treated as a
    refusal unless ``max_pixels`` is above Pillow's limit, and its error always is.

    ``draft_size`` lets JPEGs decode at a reduced scale that still covers ``draft_size`` × ``draft_size``;
    ``width`` and ``height`` in the result still describe the full picture.

    Raises :class:`ImageSkipped`, never anything else, for any file that cannot be read or decoded.
    """
    path_str = os.fspath(path)
    data, mtime_ns = _read_file(path_str)
    if not data:
        raise ImageSkipped("empty file")
    content_hash = hash_bytes(data)

    pillow_limit = Image.MAX_IMAGE_PIXELS
    caller_allows_more = pillow_limit is not None and max_pixels > pillow_limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if caller_allows_more else "error", Image.DecompressionBombWarning)
            image, width, height, image_format = _decode(data, max_pixels, draft_size)
    except ImageSkipped:
        raise
    except UnidentifiedImageError as exc:
        raise ImageSkipped("not an image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageSkipped(f"image too large: {exc}") from exc
    except MemoryError as exc:
        raise ImageSkipped("image too large: out of memory while decoding") from exc
    except OSError as exc:
        raise ImageSkipped(f"truncated or corrupt image: {exc}") from exc
    except Exception as exc:  # a malformed file can make any Pillow plugin fail in its own way
        raise ImageSkipped(f"corrupt image: {type(exc).__name__}: {exc}") from exc

    return DecodedImage(
        image=image,
        width=width,
        height=height,
        format=image_format,
        content_hash=content_hash,
        size=len(data),
        mtime_ns=mtime_ns,
    )


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come from the file system as lone surrogates
        return False
    return True


def printable_path(path: str) -> str:
    """``path`` as UTF-8 text, with bytes that are not UTF-8 shown as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sorted_entries(directory: str) -> list[os.DirEntry[str]]:
    # Reading a directory fully before descending keeps one file descriptor open at a time, however deep.
    with os.scandir(directory) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def walk_images(
    roots: Iterable[str | os.PathLike], on_error: Callable[[str, str], None] | None = None
) -> Iterator[str]:
    """Yields the paths of image files (by extension) under each root, in a deterministic order.

    Directories are walked depth-first with entries sorted by name; hidden files and directories (names starting
    with ``.``) are skipped, except a root named explicitly. A root that is a file is yielded if it has an image
    extension. Symlinked directories are followed, but no real directory is entered twice in one call, so
    symlink loops and overlapping roots terminate; a file reachable by two different paths is yielded under
    both (the content hash identifies it). Broken symlinks, missing roots and unreadable directories are passed
    to ``on_error(path, reason)``, logged as warnings and skipped.
    """

    def report(path: str, reason: str) -> None:
        logger.warning("skipping %s: %s", path, reason)
        if on_error is not None:
            on_error(path, reason)

    visited_directories: set[tuple[int, int]] = set()

    def enter(directory: str, info: os.stat_result) -> list[os.DirEntry[str]] | None:
        """The sorted entries of a directory not seen before in this walk, or None to skip it."""
        identity = (info.st_dev, info.st_ino)
        if identity in visited_directories:
            logger.debug("not entering %s again: already walked through another path", directory)
            return None
        visited_directories.add(identity)
        try:
            return _sorted_entries(directory)
        except OSError as exc:
            report(directory, _os_error_reason(directory, exc))
            return None

    for root in roots:
        root_path = os.fspath(root)
        if not _utf8_name(root_path):
            report(printable_path(root_path), "its name is not valid UTF-8; rename it to index it")
            continue
        try:
            root_info = os.stat(root_path)
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError) and not os.path.islink(root_path)
            report(root_path, "does not exist" if missing else _os_error_reason(root_path, exc))
            continue
        if stat.S_ISREG(root_info.st_mode):
            if _has_image_extension(root_path):
                yield root_path
            continue
        if not stat.S_ISDIR(root_info.st_mode):
            continue
        root_entries = enter(root_path, root_info)
        if root_entries is None:
            continue

        pending: list[Iterator[os.DirEntry[str]]] = [iter(root_entries)]
        while pending:
            entry = next(pending[-1], None)
            if entry is None:
                pending.pop()
                continue
            if entry.name.startswith("."):
                continue
            if not _utf8_name(entry.path):  # the index, its JSON and its logs hold paths as UTF-8 text
                report(printable_path(entry.path), "its name is not valid UTF-8; rename it to index it")
                continue
            try:
                # Follows symlinks; a broken link raises FileNotFoundError here.
                info = entry.stat()
            except OSError as exc:
                report(entry.path, _os_error_reason(entry.path, exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                entries = enter(entry.path, info)
                if entries is not None:
                    pending.append(iter(entries))
            elif _has_image_extension(entry.name):
                if stat.S_ISREG(info.st_mode):
                    yield entry.path
                else:  # a FIFO, socket or device named like an image: reading it could block or never end
                    report(entry.path, "not a regular file")
