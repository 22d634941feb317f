"""Containers whose pieces point where they should not: TIFF strips and tiles outside the file, overlapping
or too many; PNG files of too many chunks; JPEG files of too many segments or scans. Each is refused from
its tables, fast, over the codec and over POST /v1/predict."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from service import codecs
from service.codecs import CodecError, DecodeLimits, decode_rgb, decode_xyz
from service.main import create_app
from tests.service.fake_model import make_part, make_settings, png_bytes

MB = 1 << 20
# Generous for a loaded 2-core machine; the refusal takes milliseconds (before the check: 2 s to minutes).
FAST_S = 1.0


def tiled_float_tiff(total: int, *, side: int = 2048, tile: int = 16, planes: int = 1, shared: bool = True) -> bytes:
    """A `total`-byte little-endian float32 x/y/z TIFF of `side`² pixels in `tile`² Deflate tiles (`planes`
    3: one set of tiles per sample). `shared`: every tile points at the same range, one empty zlib stream
    followed by zero padding up to the end of the file; else tile k is the k-th byte after the tables."""
    n = (side // tile) ** 2 * planes
    entries = 12
    arrays_at = 8 + 2 + 12 * entries + 4
    bits_at, formats_at = arrays_at, arrays_at + 6
    offsets_at = formats_at + 6
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    count = total - data_at
    tags = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 3, bits_at),  # BitsPerSample: 32, 32, 32
        (259, 3, 1, 8),  # Compression: Deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (284, 3, 1, 2 if planes == 3 else 1),  # PlanarConfiguration
        (322, 3, 1, tile),  # TileWidth
        (323, 3, 1, tile),  # TileLength
        (324, 4, n, offsets_at),  # TileOffsets
        (325, 4, n, counts_at),  # TileByteCounts
        (339, 3, 3, formats_at),  # SampleFormat: IEEE float
    ]
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, number, value in tags:
        out += struct.pack(
            "<HHIHH" if kind == 3 and number == 1 else "<HHII",
            tag,
            kind,
            number,
            value,
            *(0,) * (kind == 3 and number == 1),
        )
    out += struct.pack("<I", 0) + struct.pack("<3H", 32, 32, 32) + struct.pack("<3H", 3, 3, 3)
    if shared:
        out += struct.pack(f"<{n}I", *[data_at] * n) + struct.pack(f"<{n}I", *[count] * n)
    else:
        out += struct.pack(f"<{n}I", *range(data_at, data_at + n)) + struct.pack(f"<{n}I", *[1] * n)
    assert len(out) == data_at
    return bytes(out + zlib.compress(b"") + bytes(count - 8))


def refused(decode: object, data: bytes, limits: DecodeLimits) -> tuple[CodecError, float]:
    start = time.perf_counter()
    with pytest.raises(CodecError) as caught:
        decode(data, limits)  # type: ignore[operator]
    return caught.value, time.perf_counter() - start


@pytest.mark.parametrize("size_mb", [8, 30])
def test_tiles_sharing_one_range_are_refused_fast(size_mb: int) -> None:
    data = tiled_float_tiff(size_mb * MB)
    assert len(data) == size_mb * MB
    err, seconds = refused(decode_xyz, data, DecodeLimits())
    assert err.reason == "corrupt" and "overlap" in str(err)
    assert seconds < FAST_S, f"{seconds:.2f} s"


def test_tiles_outside_the_file_and_too_many_tiles_are_refused() -> None:
    data = bytearray(tiled_float_tiff(MB, side=256, shared=False))
    counts_at = data.index(struct.pack("<HHI", 325, 4, 256)) + 8
    struct.pack_into("<I", data, struct.unpack_from("<I", data, counts_at)[0], 2 * MB)  # tile 0: 2 MB long
    err, _ = refused(decode_xyz, bytes(data), DecodeLimits())
    assert err.reason == "corrupt" and "outside" in str(err)

    many = tiled_float_tiff(4 * MB, side=4096, planes=3, shared=False)  # 196,608 tiles of 16 × 16
    err, seconds = refused(decode_xyz, many, DecodeLimits())
    assert err.reason == "too_large" and f"{codecs.MAX_TIFF_SEGMENTS:,}" in str(err)
    assert seconds < FAST_S, f"{seconds:.2f} s"


def test_disjoint_tiles_inside_the_file_still_decode() -> None:
    rgb = np.random.default_rng(3).normal(size=(64, 64, 3)).astype(np.float32)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, tile=(16, 16), compression="zlib")
    np.testing.assert_array_equal(decode_xyz(buf.getvalue(), DecodeLimits()), rgb)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_png_of_too_many_chunks_is_refused() -> None:
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    ihdr_end = 8 + 25
    padding = _chunk(b"prVt", b"") * (codecs.MAX_PNG_CHUNKS + 1)  # private ancillary chunks: decoders skip them
    data = png[:ihdr_end] + padding + png[ihdr_end:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # valid, just cut small
    err, _ = refused(decode_rgb, data, DecodeLimits())
    assert err.reason == "corrupt" and "chunks" in str(err)


def test_jpeg_of_too_many_segments_or_scans_is_refused() -> None:
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    comments = b"\xff\xfe\x00\x02" * (codecs.MAX_JPEG_SEGMENTS + 1)  # empty COM segments before the frame
    err, _ = refused(decode_rgb, jpeg[:2] + comments + jpeg[2:], DecodeLimits())
    assert err.reason == "corrupt" and "segments" in str(err)

    scans = b"\xff\xda" * codecs.MAX_JPEG_SCANS  # start-of-scan markers in a trailing comment
    err, _ = refused(
        decode_rgb, jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(scans) + 2) + scans + jpeg[2:], DecodeLimits()
    )
    assert err.reason == "corrupt" and "scans" in str(err)
    assert decode_rgb(jpeg, DecodeLimits()).shape == (8, 8, 3)


def test_crafted_tiff_gets_a_4xx_over_http_in_well_under_a_second(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_upload_bytes=40 * MB, max_image_side=4096, max_image_pixels=4096**2)
    rgb, _ = make_part(2048 // 16, 2048 // 16, seed=1)
    with TestClient(create_app(settings)) as client:
        for size_mb in (8, 30):
            xyz = tiled_float_tiff(size_mb * MB)
            start = time.perf_counter()
            response = client.post(
                "/v1/predict",
                files={"rgb": ("rgb.png", png_bytes(rgb), "image/png"), "xyz": ("xyz.tiff", xyz, "image/tiff")},
            )
            seconds = time.perf_counter() - start
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "corrupt"
            assert seconds < FAST_S, f"{size_mb} MB: {seconds:.2f} s"
