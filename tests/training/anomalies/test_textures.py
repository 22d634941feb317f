"""Tests for the texture source: DTD folder mode on a fake tree, scikit-image fallback, errors."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.anomalies.textures import FALLBACK_IMAGES, TextureSourceError, load_textures

# Solid RGB colours, far apart, that survive JPEG compression recognisably.
COLOURS = {
    "banded/banded_0001.jpg": (220, 30, 30),
    "banded/banded_0002.jpg": (30, 220, 30),
    "dotted/dotted_0001.jpg": (30, 30, 220),
    "dotted/dotted_0002.jpg": (220, 220, 30),
    "zigzagged/zigzagged_0001.jpg": (30, 220, 220),
    "zigzagged/zigzagged_0002.jpg": (220, 30, 220),
}


@pytest.fixture()
def fake_dtd(tmp_path: Path) -> Path:
    images = tmp_path / "dtd" / "images"
    for rel, rgb in COLOURS.items():
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.zeros((24, 32, 3), np.uint8) + np.array(rgb[::-1], np.uint8)  # written as BGR
        assert cv2.imwrite(str(path), image)
    # Not textures: a top-level jpg, a text file, a png inside a class folder, a hidden folder's jpg.
    assert cv2.imwrite(str(images / "stray.jpg"), np.zeros((8, 8, 3), np.uint8))
    (images / "banded" / "notes.txt").write_text("not an image")
    assert cv2.imwrite(str(images / "dotted" / "dotted_0003.png"), np.zeros((8, 8, 3), np.uint8))
    return images


def test_dtd_mode_loads_every_class_jpg_sorted_as_rgb(fake_dtd: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.anomalies.textures"):
        textures = load_textures(fake_dtd)
    assert len(textures) == len(COLOURS)
    for image, expected in zip(textures, COLOURS.values(), strict=True):
        assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
        np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), expected, atol=12)  # RGB, not BGR
    assert "6 images" in caplog.text


def test_dtd_mode_max_images_spreads_over_classes(fake_dtd: Path) -> None:
    textures = load_textures(fake_dtd, max_images=3)
    assert len(textures) == 3
    # One from each class: first, middle (index 2.5 rounds to 2) and last of the sorted list.
    picks = [COLOURS[k] for k in ("banded/banded_0001.jpg", "dotted/dotted_0001.jpg", "zigzagged/zigzagged_0002.jpg")]
    for image, expected in zip(textures, picks, strict=True):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), expected, atol=12)


def test_dtd_gray_jpg_becomes_rgb(tmp_path: Path) -> None:
    (tmp_path / "gray").mkdir()
    assert cv2.imwrite(str(tmp_path / "gray" / "g.jpg"), np.full((10, 12), 90, np.uint8))
    (image,) = load_textures(tmp_path)
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_dtd_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(TextureSourceError, match="does not exist"):
        load_textures(tmp_path / "missing")
    (tmp_path / "empty" / "banded").mkdir(parents=True)
    with pytest.raises(TextureSourceError, match=r"empty.*holds no"):
        load_textures(tmp_path / "empty")
    broken = tmp_path / "broken" / "banded" / "bad.jpg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(TextureSourceError, match=r"bad\.jpg"):
        load_textures(tmp_path / "broken")
    with pytest.raises(ValueError, match="max_images"):
        load_textures(tmp_path / "broken", max_images=0)


def test_fallback_is_several_rgb_images_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.anomalies.textures"):
        textures = load_textures(None)
    assert len(textures) == len(FALLBACK_IMAGES) >= 8
    for image in textures:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 100
    # Gray sources (brick) are replicated to RGB; colour photos (coffee) keep their colour.
    brick, coffee = textures[FALLBACK_IMAGES.index("brick")], textures[FALLBACK_IMAGES.index("coffee")]
    assert (brick[..., 0] == brick[..., 2]).all()
    assert np.abs(coffee[..., 0].astype(int) - coffee[..., 2]).mean() > 10
    # Distinct images, not one repeated.
    assert len({hashlib.sha1(t.tobytes()).hexdigest() for t in textures}) == len(textures)
    records = [r for r in caplog.records if r.name == "training.anomalies.textures" and r.levelno == logging.INFO]
    assert len(records) == 1 and "fallback" in records[0].getMessage()
    assert f"{len(FALLBACK_IMAGES)} images" in records[0].getMessage()


def test_fallback_max_images() -> None:
    textures = load_textures(None, max_images=3)
    assert len(textures) == 3
    assert [t.shape for t in textures] == [(512, 512, 3)] * 3  # brick, grass, gravel
