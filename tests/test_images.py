"""Image files for the indexer: decoding awkward formats, refusing hostile files, walking folders safely."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmodal.data import images
from mmodal.data.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    DecodedImage,
    FileStat,
    ImageSkipped,
    hash_bytes,
    read_image,
    stat_file,
    walk_images,
)
from reliability import hostile_images as hostile


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> tuple[Path, list[Path], dict[Path, str]]:
    root = tmp_path_factory.mktemp("hostile")
    good, bad = hostile.make_hostile_folder(root)
    return root, good, bad


def halves(decoded: DecodedImage, axis: int = 1) -> tuple[float, float]:
    """Mean brightness of the first and second half of the picture along ``axis`` (1: left/right, 0: top/bottom)."""
    pixels = np.asarray(decoded.image, dtype=np.float64)
    middle = pixels.shape[axis] // 2
    first, second = np.split(pixels, [middle], axis=axis)
    return float(first.mean()), float(second.mean())


def mean_colour(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.image, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_extensions_are_lowercase_with_dot():
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"} == IMAGE_EXTENSIONS
    assert MAX_PIXELS == 64_000_000


def test_every_good_file_decodes_to_rgb(hostile_folder):
    _, good, _ = hostile_folder
    for path in good:
        decoded = read_image(path)
        data = path.read_bytes()
        assert decoded.image.mode == "RGB", path
        assert decoded.image.size == (decoded.width, decoded.height), path
        assert decoded.format is not None, path
        assert decoded.size == len(data)
        assert decoded.content_hash == hash_bytes(data)
        assert decoded.mtime_ns == os.stat(path).st_mtime_ns


def test_lossless_formats_keep_exact_pixels(hostile_folder):
    root, _, _ = hostile_folder
    for name in (hostile.PLAIN_PNG, hostile.STILL_WEBP, hostile.NESTED_PNG, hostile.LINKED_PNG):
        decoded = read_image(root / name)
        np.testing.assert_array_equal(np.asarray(decoded.image), hostile.gradient_rgb(), err_msg=name)


def test_exif_orientation_turns_the_picture_upright(hostile_folder):
    root, _, _ = hostile_folder
    decoded = read_image(root / hostile.ROTATED_JPEG)
    assert (decoded.width, decoded.height) == (hostile.HEIGHT, hostile.WIDTH)
    assert decoded.image.size == (hostile.HEIGHT, hostile.WIDTH)
    top, bottom = halves(decoded, axis=0)
    assert top > 200 and bottom < 50  # the stored left half is on top after a quarter turn clockwise


@pytest.mark.parametrize(
    "name, bright, dark",
    [
        (hostile.CMYK_JPEG, 230, 25),
        (hostile.GRAY16_PNG, 225, 10),  # 60000 and 1000 out of 65535
        (hostile.FLOAT_TIFF, 250, 5),
        (hostile.RGBA_PNG, 250, 5),  # the transparent half lies over black
    ],
)
def test_brightness_pattern_survives_conversion(hostile_folder, name, bright, dark):
    root, _, _ = hostile_folder
    left, right = halves(read_image(root / name))
    assert left >= bright and right <= dark, (name, left, right)


def test_palette_transparency_becomes_black(hostile_folder):
    root, _, _ = hostile_folder
    pixels = np.asarray(read_image(root / hostile.PALETTE_PNG).image)
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, -1]) == (0, 0, 0)  # green, but transparent


@pytest.mark.parametrize("name", [hostile.ANIMATED_GIF, hostile.ANIMATED_WEBP])
def test_animations_give_their_first_frame(hostile_folder, name):
    root, _, _ = hostile_folder
    with Image.open(root / name) as animation:
        assert animation.n_frames == len(hostile.ANIMATION_COLOURS)
    decoded = read_image(root / name)
    np.testing.assert_allclose(mean_colour(decoded), hostile.ANIMATION_COLOURS[0], atol=3)
    assert getattr(decoded.image, "fp", None) is None  # the file's bytes are not kept alive


def test_unicode_file_name(hostile_folder):
    root, _, _ = hostile_folder
    np.testing.assert_allclose(mean_colour(read_image(root / hostile.UNICODE_PNG)), (0, 200, 0), atol=1)


def _picture_in_mode(mode: str) -> Image.Image:
    """A picture bright on the left and dark on the right, stored in ``mode``."""
    levels = hostile.bright_left_dark_right(bright=200, dark=20)
    if mode == "1":
        return Image.fromarray(levels.astype(np.uint8)).convert("1", dither=Image.Dither.NONE)
    if mode == "LA":
        grey = levels.astype(np.uint8)
        return Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1))
    if mode == "P":
        return Image.fromarray(levels.astype(np.uint8)).convert("P")
    if mode == "I":  # 16-bit values held in 32 bits
        return Image.fromarray(hostile.bright_left_dark_right(bright=40_000, dark=2_000).astype(np.int32))
    if mode == "I;16B":
        big_endian = hostile.bright_left_dark_right(bright=50_000, dark=500).astype(">u2")
        return Image.frombytes(mode, (hostile.WIDTH, hostile.HEIGHT), big_endian.tobytes())
    if mode == "F":  # arbitrary floats, stretched over 0..255
        return Image.fromarray(hostile.bright_left_dark_right(bright=3000, dark=-1000).astype(np.float32))
    return Image.fromarray(levels.astype(np.uint8)).convert(mode)


@pytest.mark.parametrize(
    "mode, fmt",
    [("1", "PNG"), ("L", "BMP"), ("LA", "PNG"), ("P", "GIF"), ("I", "TIFF"), ("I;16B", "TIFF"), ("F", "TIFF")],
)
def test_other_modes_convert_with_their_brightness(tmp_path, mode, fmt):
    path = tmp_path / f"picture.{fmt.lower()}"
    _picture_in_mode(mode).save(path, fmt)
    with Image.open(path) as stored:
        assert stored.mode == mode  # the file really exercises that mode
    decoded = read_image(path)
    assert decoded.image.mode == "RGB"
    left, right = halves(decoded)
    assert left > 150 and right < 40, (mode, left, right)


def test_every_bad_file_is_skipped_with_its_reason(hostile_folder):
    _, _, bad = hostile_folder
    for path, expected in bad.items():
        started = time.perf_counter()
        with pytest.raises(ImageSkipped) as caught:
            read_image(path)
        assert expected in caught.value.reason, (path, caught.value.reason)
        assert str(caught.value) == caught.value.reason
        assert time.perf_counter() - started < 1.0, f"{path.name} took too long to refuse"


def test_bombs_are_small_and_refused_without_touching_pillow_settings(hostile_folder):
    root, _, _ = hostile_folder
    for name in (hostile.PILLOW_BOMB_PNG, hostile.HEADER_BOMB_PNG):
        assert (root / name).stat().st_size < 200_000
    limit_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(ImageSkipped, match="9000×9000 pixels \\(limit 64,000,000\\)"):
        read_image(root / hostile.HEADER_BOMB_PNG)
    with pytest.raises(ImageSkipped, match="image too large"):
        read_image(root / hostile.PILLOW_BOMB_PNG)
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert list(warnings.filters) == filters_before


def test_max_pixels_is_the_callers_choice(hostile_folder):
    root, _, _ = hostile_folder
    with pytest.raises(ImageSkipped, match="40×20 pixels \\(limit 100\\)"):
        read_image(root / hostile.PLAIN_PNG, max_pixels=100)
    assert read_image(root / hostile.PLAIN_PNG, max_pixels=800).width == hostile.WIDTH


def test_directory_and_missing_file_are_skipped(tmp_path):
    with pytest.raises(ImageSkipped, match="directory"):
        read_image(tmp_path)
    with pytest.raises(ImageSkipped, match="file vanished"):
        read_image(tmp_path / "gone.png")


def test_pillow_failures_of_any_kind_become_skips(tmp_path, monkeypatch):
    path = tmp_path / "fine.png"
    Image.new("RGB", (4, 4)).save(path)

    def explode(*args, **kwargs):
        raise KeyError("a plugin tripped over its own feet")

    monkeypatch.setattr(images.Image, "open", explode)
    with pytest.raises(ImageSkipped, match="corrupt image: KeyError"):
        read_image(path)


def test_hash_is_stable_and_follows_content(hostile_folder, tmp_path):
    root, _, _ = hostile_folder
    original = root / hostile.PLAIN_PNG
    copy = tmp_path / "elsewhere" / "same bytes.png"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    first, second, copied = read_image(original), read_image(original), read_image(copy)
    assert first.content_hash == second.content_hash == copied.content_hash
    assert len(first.content_hash) == 32 and int(first.content_hash, 16) >= 0
    assert hash_bytes(b"abc") == hash_bytes(b"abc") != hash_bytes(b"abd")
    assert read_image(root / hostile.UNICODE_PNG).content_hash != first.content_hash


def test_draft_size_decodes_jpegs_smaller_but_reports_full_size(tmp_path):
    exif = Image.Exif()
    exif[hostile.EXIF_ORIENTATION_TAG] = 6
    picture = Image.fromarray(hostile.bright_left_dark_right(800, 400).astype(np.uint8)).convert("RGB")
    path = tmp_path / "large.jpg"
    picture.save(path, "JPEG", exif=exif)

    full = read_image(path)
    drafted = read_image(path, draft_size=100)
    assert (full.width, full.height) == (drafted.width, drafted.height) == (400, 800)
    assert full.image.size == (400, 800)
    assert drafted.image.size == (100, 200)  # libjpeg decoded at a quarter of the scale, then turned upright
    assert drafted.content_hash == full.content_hash
    top, bottom = halves(drafted, axis=0)
    assert top > 200 and bottom < 50

    png = tmp_path / "large.png"
    picture.save(png)
    assert read_image(png, draft_size=100).image.size == (800, 400)  # only JPEGs can be drafted


def test_stat_file(hostile_folder, tmp_path):
    root, _, bad = hostile_folder
    path = root / hostile.PLAIN_PNG
    info = os.stat(path)
    assert stat_file(path) == FileStat(path=str(path), size=info.st_size, mtime_ns=info.st_mtime_ns)
    with pytest.raises(ImageSkipped, match="file vanished"):
        stat_file(tmp_path / "missing.png")
    with pytest.raises(ImageSkipped, match="broken symlink"):
        stat_file(root / hostile.BROKEN_LINK)
    with pytest.raises(ImageSkipped, match="directory"):
        stat_file(root)


def expected_walk(good: list[Path], bad: dict[Path, str]) -> set[str]:
    """Every regular file with an image extension; broken links and FIFOs are not files to index."""
    return {str(path) for path in good} | {str(path) for path in bad if path.is_file()}


def test_walk_finds_each_image_once_and_survives_the_loop(hostile_folder):
    root, good, bad = hostile_folder
    errors: list[tuple[str, str]] = []
    found = list(walk_images([root], on_error=lambda path, reason: errors.append((path, reason))))
    assert len(found) == len(set(found))
    assert set(found) == expected_walk(good, bad)
    assert str(root / hostile.LINKED_PNG) in found
    assert not any(hostile.HIDDEN_PNG in path or hostile.HIDDEN_DIR in path for path in found)
    assert not any(hostile.LOOP_LINK in path for path in found)
    expected_errors = [(str(root / hostile.BROKEN_LINK), "broken symlink")]
    if (root / hostile.FIFO_PNG).exists():  # named like an image but not a file: reported, never opened
        expected_errors.insert(0, (str(root / hostile.FIFO_PNG), "not a regular file"))
    assert errors == expected_errors
    assert list(walk_images([root])) == found  # deterministic


def test_walk_order_is_sorted_depth_first(tmp_path):
    for relative in ("b.png", "a/z.jpg", "a/c.gif", "c.PNG", "a.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    found = [os.path.relpath(path, tmp_path) for path in walk_images([tmp_path])]
    assert found == [os.path.join("a", "c.gif"), os.path.join("a", "z.jpg"), "b.png", "c.PNG"]


def test_walk_roots_may_be_files_missing_or_overlapping(hostile_folder, tmp_path):
    root, _, _ = hostile_folder
    errors: list[tuple[str, str]] = []
    report = lambda path, reason: errors.append((path, reason))
    plain, notes = root / hostile.PLAIN_PNG, root / hostile.NOT_AN_IMAGE_NAME
    assert list(walk_images([plain, notes], on_error=report)) == [str(plain)]
    assert list(walk_images([tmp_path / "nowhere"], on_error=report)) == []
    assert errors == [(str(tmp_path / "nowhere"), "does not exist")]
    nested = root / Path(hostile.NESTED_PNG).parent
    once = list(walk_images([root]))
    assert list(walk_images([root, nested])) == once  # nested was already walked inside root


def test_self_referencing_symlink_is_reported_not_followed(tmp_path):
    (tmp_path / "self.png").symlink_to("self.png")
    errors: list[tuple[str, str]] = []
    assert list(walk_images([tmp_path], on_error=lambda path, reason: errors.append((path, reason)))) == []
    assert errors == [(str(tmp_path / "self.png"), "symlink loop")]
    with pytest.raises(ImageSkipped, match="symlink loop"):
        read_image(tmp_path / "self.png")


def test_walk_reports_unreadable_directories(tmp_path, monkeypatch):
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.png").write_bytes(b"")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.png").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):
        # Root may read any directory, so the refusal is simulated rather than made with chmod.
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(images.os, "scandir", scandir)
    errors: list[tuple[str, str]] = []
    found = list(walk_images([tmp_path], on_error=lambda path, reason: errors.append((path, reason))))
    assert found == [str(tmp_path / "open" / "a.png")]
    assert errors == [(str(tmp_path / "locked"), "unreadable: permission denied")]


def test_module_does_not_need_torch():
    source = Path(images.__file__).read_text(encoding="utf-8")
    assert "import torch" not in source and "from torch" not in source
