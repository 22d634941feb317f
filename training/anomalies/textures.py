"""Texture source for the texture anomaly generator: DTD images when given, else scikit-image's bundled set."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# scikit-image images that ship inside its wheel (no download): textures first, then photos, so that a small
# `max_images` keeps the most texture-like ones. Others (eagle, lily, ...) need pooch and the network.
FALLBACK_IMAGES = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "cell",
    "page",
    "text",
    "camera",
    "coffee",
    "chelsea",
    "astronaut",
    "rocket",
    "clock",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)


class TextureSourceError(FileNotFoundError):
    """The texture folder is missing, holds no `*/*.jpg` images, or an image cannot be read."""


def load_textures(dtd_dir: Path | None, *, max_images: int | None = None) -> list[np.ndarray]:
    """Texture images, each (H, W, 3) uint8 RGB (gray sources are replicated to three channels).

    `dtd_dir`: a DTD `images/` folder; every `dtd_dir/*/*.jpg` is loaded, in sorted path order. None: the
    fallback set bundled with scikit-image (`FALLBACK_IMAGES`), said in an INFO log line.
    `max_images`: load at most this many; from DTD they are spread evenly over the sorted list (so every
    texture class is represented), from the fallback the first ones are taken.
    Raises `TextureSourceError` for a missing folder, a folder without images or an unreadable image.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be ≥ 1 or None, got {max_images}")
    if dtd_dir is None:
        return _fallback_textures(max_images)
    return _dtd_textures(Path(dtd_dir), max_images)


def _dtd_textures(dtd_dir: Path, max_images: int | None) -> list[np.ndarray]:
    if not dtd_dir.is_dir():
        raise TextureSourceError(f"texture folder {dtd_dir} does not exist or is not a folder")
    paths = sorted(p for p in dtd_dir.glob("*/*.jpg") if p.is_file())
    if not paths:
        raise TextureSourceError(
            f"texture folder {dtd_dir} holds no <class>/*.jpg images (expected DTD's images/ folder, "
            f"e.g. dtd/images/banded/banded_0002.jpg)"
        )
    if max_images is not None and max_images < len(paths):
        picks = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
        paths = [paths[i] for i in picks]
    textures = [_read_rgb(p) for p in paths]
    logger.info("textures: %d images from %s", len(textures), dtd_dir)
    return textures


def _read_rgb(path: Path) -> np.ndarray:
    # imdecode on the bytes rather than imread: it reads any file name, and None means "not an image".
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise TextureSourceError(f"texture {path} is not a readable image")
    return np.ascontiguousarray(image[..., ::-1])


def _to_rgb_uint8(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TextureSourceError(f"fallback texture {name!r} is {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise TextureSourceError(f"fallback texture {name!r} has shape {image.shape}, expected (H, W[, 3|4])")
    return np.ascontiguousarray(image)


def _fallback_textures(max_images: int | None) -> list[np.ndarray]:
    # Imported here: the DTD path and the service never need scikit-image.
    from skimage import data

    names = FALLBACK_IMAGES[:max_images] if max_images is not None else FALLBACK_IMAGES
    textures = [_to_rgb_uint8(np.asarray(getattr(data, name)()), name) for name in names]
    logger.info(
        "textures: no DTD folder given, using the fallback set of %d images bundled with scikit-image (%s)",
        len(textures),
        ", ".join(names),
    )
    return textures
