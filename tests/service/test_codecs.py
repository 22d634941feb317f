"""Tests for service.codecs: every accepted kind of upload, every refusal reason, and a seeded fuzz run."""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import tracemalloc
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from numpy.lib import format as npy_format

from service import codecs
from service.codecs import CodecError, DecodeLimits, decode_rgb, decode_xyz

LIMITS = DecodeLimits(max_bytes=1 << 20, max_side=256, max_pixels=256 * 256)
RNG_SEED = 1234


# ---------- builders for small test files ----------


def _png(image: np.ndarray, *params: int) -> bytes:
    return cv2.imencode(".png", image, list(params))[1].tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()


def _tiff(array: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_raw(width: int, height: int, depth: int, colour: int, rows: bytes, extra: bytes = b"") -> bytes:
    """A PNG built chunk by chunk, so the header can declare what the test wants (CRCs kept valid)."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _patch_tiff_size(data: bytes, height: int, width: int) -> bytes:
    """Rewrite ImageLength/ImageWidth in place; the strips stay as small as they were."""
    out = bytearray(data)
    page = tifffile.TiffFile(io.BytesIO(data)).pages.first
    for tag in page.tags.values():
        if tag.name in ("ImageWidth", "ImageLength"):
            assert tag.dtype == 4  # LONG
            struct.pack_into("<I", out, tag.valueoffset, width if tag.name == "ImageWidth" else height)
    return bytes(out)


def _patch_jpeg_sof(data: bytes, height: int | None = None, width: int | None = None, precision: int = 8) -> bytes:
    out = bytearray(data)
    i = out.index(b"\xff\xc0")  # baseline SOF0, which OpenCV writes
    out[i + 4] = precision
    if height is not None and width is not None:
        struct.pack_into(">HH", out, i + 5, height, width)
    return bytes(out)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any call into a pixel decoder; a refusal from the header must leave it empty."""
    calls: list[str] = []

    def spy(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(codecs.cv2, "imdecode", spy("imdecode", cv2.imdecode))
    monkeypatch.setattr(codecs.np, "load", spy("np.load", np.load))
    monkeypatch.setattr(tifffile.TiffPage, "asarray", spy("asarray", tifffile.TiffPage.asarray))
    return calls


# ---------- decode_rgb: accepted inputs ----------


def test_png_rgb8_round_trips_exactly(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_rgb(_png(rgb[:, :, ::-1]), LIMITS)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_png_gray_16bit_rgba_and_1bit(rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(_png(gray), LIMITS), np.repeat(gray[:, :, None], 3, axis=2))
    rgb16 = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    rgb16[0, 0] = (0, 65535, 257 * 100)
    out = decode_rgb(_png(rgb16[:, :, ::-1]), LIMITS)
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (0, 255, 100)
    np.testing.assert_array_equal(out, np.round(rgb16 / 257.0).astype(np.uint8))
    bgra = rng.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    bgra[:, :, 3] = 0  # fully transparent: colours must survive, not be composited away
    np.testing.assert_array_equal(decode_rgb(_png(bgra), LIMITS), bgra[:, :, 2::-1])
    bw = (np.arange(24).reshape(4, 6) % 3 == 0).astype(np.uint8) * 255
    bilevel = _png(bw, cv2.IMWRITE_PNG_BILEVEL, 1)
    assert bilevel[24] == 1  # really a 1-bit PNG
    np.testing.assert_array_equal(decode_rgb(bilevel, LIMITS)[:, :, 1], bw)


def test_palette_png_expands_to_colours() -> None:
    palette = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255])
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in indices)  # filter byte 0 per row
    data = _png_raw(3, 2, 8, 3, rows, extra=_chunk(b"PLTE", palette))
    expected = np.frombuffer(palette, np.uint8).reshape(3, 3)[indices]
    np.testing.assert_array_equal(decode_rgb(data, LIMITS), expected)


def test_jpeg_colour_and_gray_decode_close_to_source() -> None:
    yy, xx = np.mgrid[0:16, 0:24]
    rgb = np.stack([xx * 10, yy * 15, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    out = decode_rgb(_jpeg(rgb[:, :, ::-1]), LIMITS)
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 3  # lossy, but channel order must be right
    gray = decode_rgb(_jpeg(rgb[:, :, 0]), LIMITS)
    assert np.abs(gray[:, :, 2].astype(int) - rgb[:, :, 0]).mean() < 3


def test_jpeg_exif_orientation_is_ignored() -> None:
    # An APP1 Exif segment with Orientation = 6 (rotate 90°); the pixel grid must stay 8×16.
    ifd = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + b"\x00" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(ifd)) + b"Exif\x00\x00" + ifd
    data = _jpeg(np.zeros((8, 16, 3), np.uint8))
    assert decode_rgb(data[:2] + app1 + data[2:], LIMITS).shape == (8, 16, 3)


def test_tiff_rgb_gray16_rgba_and_planar(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(_tiff(rgb, photometric="rgb"), LIMITS), rgb)
    planar = _tiff(rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(decode_rgb(planar, LIMITS), rgb)
    rgba = np.concatenate([rgb, np.zeros((5, 6, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_rgb(_tiff(rgba, photometric="rgb", extrasamples=[2]), LIMITS), rgb)
    gray16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    out = decode_rgb(_tiff(gray16, photometric="minisblack"), LIMITS)
    np.testing.assert_array_equal(out[:, :, 0], np.round(gray16 / 257.0).astype(np.uint8))


# ---------- decode_xyz: accepted inputs ----------


def test_xyz_npy_float32_float64_fortran_and_big_endian(rng: np.random.Generator) -> None:
    xyz = rng.normal(size=(4, 5, 3)).astype(np.float32)
    for variant in (xyz, xyz.astype(np.float64), np.asfortranarray(xyz), xyz.astype(">f4")):
        out = decode_xyz(_npy(variant), LIMITS)
        assert out.dtype == np.float32 and out.shape == (4, 5, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, xyz)
    assert b"'fortran_order': True" in _npy(np.asfortranarray(xyz))[:128]  # really stored in Fortran order


def test_xyz_nan_and_zero_kept(rng: np.random.Generator) -> None:
    xyz = rng.normal(size=(3, 4, 3)).astype(np.float32)
    xyz[0, 0] = np.nan
    xyz[1, 1] = 0.0
    for data in (_npy(xyz), _tiff(xyz)):
        out = decode_xyz(data, LIMITS)
        assert np.isnan(out[0, 0]).all() and (out[1, 1] == 0).all()
        assert np.isfinite(out).sum() == xyz.size - 3


def test_xyz_tiff_float32_float64_deflate_planar(rng: np.random.Generator) -> None:
    xyz = rng.normal(size=(6, 5, 3)).astype(np.float32)
    planar = _tiff(xyz.transpose(2, 0, 1), planarconfig="separate", photometric="rgb")
    for data in (_tiff(xyz), _tiff(xyz.astype(np.float64)), _tiff(xyz, compression="zlib"), planar):
        np.testing.assert_array_equal(decode_xyz(data, LIMITS), xyz)


def test_format_comes_from_bytes_and_accepts_bytearray(rng: np.random.Generator) -> None:
    xyz = rng.normal(size=(2, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(decode_xyz(bytearray(_npy(xyz)), LIMITS), xyz)
    assert codecs.sniff_format(_tiff(xyz)) == "tiff" and codecs.sniff_format(b"GIF89a") is None


# ---------- refusals ----------


def _refused(reason: str, fn: Any, data: bytes, limits: DecodeLimits = LIMITS) -> CodecError:
    with pytest.raises(CodecError) as info:
        fn(data, limits)
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, ValueError)
    return info.value


def test_empty_and_oversized_uploads_and_bad_arguments() -> None:
    err = _refused("empty", decode_rgb, b"")
    assert err.field == "rgb" and str(err).startswith("rgb: ")
    err = _refused("too_large", decode_xyz, b"\x93NUMPY" + b"\x00" * 200, DecodeLimits(max_bytes=100))
    assert "206 bytes" in str(err) and "100 bytes" in str(err)
    with pytest.raises(ValueError, match="max_side"):
        DecodeLimits(max_side=0)
    with pytest.raises(TypeError, match="expected bytes"):  # a caller bug, not a bad upload
        decode_rgb("not bytes", LIMITS)  # type: ignore[arg-type]


def test_unknown_or_wrong_format(rng: np.random.Generator) -> None:
    err = _refused("unsupported_format", decode_rgb, b"GIF89a\x01\x00")
    assert "47 49 46" in str(err) and "PNG, JPEG or TIFF" in str(err)
    err = _refused("unsupported_format", decode_xyz, _png(np.zeros((2, 2), np.uint8)))
    assert "got PNG" in str(err)
    _refused("unsupported_format", decode_rgb, _npy(np.zeros((2, 2, 3), np.float32)))
    lzma = _tiff(np.zeros((4, 4, 3), np.float32), compression="lzma")
    assert "LZMA" in str(_refused("unsupported_format", decode_xyz, lzma))
    cmyk = _tiff(np.zeros((4, 4, 4), np.uint8), photometric="separated")
    assert "SEPARATED" in str(_refused("unsupported_format", decode_rgb, cmyk))
    palette = _tiff(np.zeros((4, 4), np.uint8), photometric="palette", colormap=np.zeros((3, 256), np.uint16))
    assert "PALETTE" in str(_refused("unsupported_format", decode_rgb, palette))


def test_corrupt_files(rng: np.random.Generator) -> None:
    png = _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _refused("corrupt", decode_rgb, png[: len(png) // 2])
    _refused("corrupt", decode_rgb, png[:20])  # IHDR cut short
    _refused("corrupt", decode_rgb, b"\xff\xd8\xff\xe0\x00\x04\x00\x00\xff\xda")  # scan before any frame
    _refused("corrupt", decode_xyz, b"II*\x00" + b"\xff" * 12)
    npy = _npy(rng.normal(size=(8, 8, 3)).astype(np.float32))
    err = _refused("corrupt", decode_xyz, npy[:-10])
    assert "truncated" in str(err) and "768" in str(err)


def test_zero_sizes_and_per_side_and_total_pixel_limits() -> None:
    assert "4×0" in str(_refused("bad_dimensions", decode_rgb, _png_raw(0, 4, 8, 0, b"")))
    _refused("bad_dimensions", decode_xyz, _npy(np.zeros((0, 5, 3), np.float32)))
    limits = DecodeLimits(max_side=50, max_pixels=40 * 40)
    _refused("too_large", decode_rgb, _png(np.zeros((10, 51, 3), np.uint8)), limits)
    err = _refused("too_large", decode_xyz, _npy(np.zeros((41, 41, 3), np.float32)), limits)
    assert "41×41" in str(err) and "1,600 pixels" in str(err)
    assert decode_xyz(_npy(np.zeros((40, 40, 3), np.float32)), limits).shape == (40, 40, 3)


def test_enormous_declared_sizes_refused_before_decoding(no_decoding: list[str]) -> None:
    """Headers declare 100000×100000 (tens of GB decoded) in files of a few hundred bytes."""
    huge = 100_000
    png = _png_raw(huge, huge, 16, 6, b"\x00" * 64)
    jpeg = _patch_jpeg_sof(_jpeg(np.zeros((8, 8, 3), np.uint8)), huge // 2, huge // 2)
    rgb_tiff = _patch_tiff_size(_tiff(np.zeros((4, 4, 3), np.uint8), photometric="rgb"), huge, huge)
    xyz_tiff = _patch_tiff_size(_tiff(np.zeros((4, 4, 3), np.float32)), huge, huge)
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (huge, huge, 3)})
    tracemalloc.start()
    try:
        # png[:33] is the signature and IHDR alone: the size is refused before the chunks are looked at.
        for fn, data in ((decode_rgb, png), (decode_rgb, png[:33]), (decode_rgb, jpeg), (decode_rgb, rgb_tiff)):
            assert len(data) < 2000
            _refused("too_large", fn, data)
        for data in (xyz_tiff, header.getvalue()):
            assert "100000×100000" in str(_refused("too_large", decode_xyz, data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert no_decoding == []
    assert peak < 5 * 1024 * 1024
    decode_xyz(_npy(np.zeros((2, 2, 3), np.float32)), LIMITS)
    assert no_decoding == ["np.load"]  # the spy does see a real decode


def test_png_chunk_longer_than_file_refused_before_opencv(no_decoding: list[str]) -> None:
    data = bytearray(_png(np.zeros((12, 10, 3), np.uint8)))
    idat = data.index(b"IDAT") - 4
    struct.pack_into(">I", data, idat, 2**31 - 1)  # OpenCV would allocate 2 GiB for this chunk
    err = _refused("corrupt", decode_rgb, bytes(data))
    assert "IDAT" in str(err) and "2,147,483,647" in str(err)
    assert no_decoding == []


def test_deflate_bomb_refused_before_tifffile_inflates(no_decoding: list[str]) -> None:
    data = bytearray(_tiff(np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32), compression="zlib"))
    page = tifffile.TiffFile(io.BytesIO(bytes(data))).pages.first
    bomb = zlib.compress(b"\x00" * (1 << 20), 9)  # 1 MiB of zeros; the image declares 3 KiB
    assert len(bomb) <= page.databytecounts[0]
    data[page.dataoffsets[0] : page.dataoffsets[0] + len(bomb)] = bomb
    err = _refused("too_large", decode_xyz, bytes(data))
    assert "inflates" in str(err)
    assert no_decoding == []


def test_bad_dtypes() -> None:
    _refused("bad_dtype", decode_xyz, _npy(np.zeros((2, 2, 3), np.int32)))
    _refused("bad_dtype", decode_xyz, _npy(np.zeros((2, 2, 3), np.float16)))
    _refused("bad_dtype", decode_xyz, _tiff(np.zeros((2, 2, 3), np.uint16), photometric="rgb"))
    err = _refused("bad_dtype", decode_rgb, _tiff(np.zeros((2, 2, 3), np.float32), photometric="rgb"))
    assert "float32" in str(err)
    twelve_bit = _patch_jpeg_sof(_jpeg(np.zeros((8, 8, 3), np.uint8)), precision=12)
    assert "12-bit" in str(_refused("bad_dtype", decode_rgb, twelve_bit))


def test_bad_shapes() -> None:
    err = _refused("bad_shape", decode_xyz, _npy(np.zeros((4, 5), np.float32)))
    assert "(4, 5)" in str(err) and "(H, W, 3)" in str(err)
    _refused("bad_shape", decode_xyz, _npy(np.zeros((4, 5, 4), np.float32)))
    err = _refused("bad_shape", decode_xyz, _tiff(np.zeros((4, 5), np.float32)))
    assert "1 samples per pixel" in str(err)


def test_infinite_and_out_of_range_coordinates() -> None:
    xyz = np.zeros((3, 3, 3), np.float64)
    xyz[0, 0, 2] = np.inf
    xyz[1, 1, 0] = 1e300  # finite in float64, inf in float32
    err = _refused("bad_values", decode_xyz, _npy(xyz))
    assert "2 coordinates" in str(err)


UNPICKLED: list[str] = []


class _Tripwire:
    """Unpickling this records a call: proof that a refused pickle was never loaded."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (UNPICKLED.append, ("tripwire",))


def test_pickled_npy_refused_without_unpickling() -> None:
    payload = np.empty((1, 1, 3), dtype=object)
    payload[0, 0, :] = [_Tripwire(), 0.0, 0.0]
    err = _refused("bad_dtype", decode_xyz, _npy(payload, allow_pickle=True))
    assert "pickle" in str(err)
    assert UNPICKLED == []


# ---------- fuzz ----------


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bytes
        for i in rng.integers(0, len(out), size=int(rng.integers(1, 9))):
            out[i] = int(rng.integers(256))
    elif kind == 1:  # truncate
        del out[int(rng.integers(8, len(out))) :]
    elif kind == 2:  # insert junk
        i = int(rng.integers(8, len(out)))
        out[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:  # overwrite a header byte with an extreme value (sizes, counts, offsets)
        out[int(rng.integers(8, min(len(out), 200)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(out)


def test_fuzz_only_codec_errors_escape() -> None:
    rng = np.random.default_rng(RNG_SEED)
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    xyz = rng.normal(size=(12, 10, 3)).astype(np.float32)
    seeds = [_png(image), _png(image[:, :, 0]), _png(image.astype(np.uint16) * 257), _jpeg(image)]
    seeds += [_tiff(image, photometric="rgb"), _tiff(xyz), _tiff(xyz, compression="zlib")]
    seeds += [_npy(xyz), _npy(xyz.astype(np.float64))]
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\x93NUMPY", b""]
    deadline = time.monotonic() + 4.0
    cases, decoded, slowest = 0, 0, 0.0
    reasons: set[str] = set()
    while cases < 3000 and time.monotonic() < deadline:
        if cases % 5 == 0:
            data = magics[cases % len(magics)] + rng.integers(0, 256, int(rng.integers(0, 300)), np.uint8).tobytes()
        else:
            data = _mutate(seeds[cases % len(seeds)], rng)
        for fn, dtype in ((decode_rgb, np.uint8), (decode_xyz, np.float32)):
            started = time.monotonic()
            try:
                out = fn(data, LIMITS)
            except CodecError as exc:
                reasons.add(exc.reason)
            else:
                decoded += 1
                assert out.dtype == dtype and out.ndim == 3 and out.shape[2] == 3
            finally:
                slowest = max(slowest, time.monotonic() - started)
        cases += 1
    assert cases >= 100, f"only {cases} fuzz cases ran in the time budget"
    assert decoded > 0  # some mutations stay decodable: the success path is fuzzed too
    assert {"corrupt", "unsupported_format", "too_large"} <= reasons, reasons  # parsers were reached
    # A tiny file must not cost real work: this once caught OpenCV allocating a PNG chunk's declared size.
    assert slowest < 1.0, f"one {slowest:.2f} s decode of a file under 1 KiB"


# ---------- byte-bounded decoding: sample type, channels, compression and decoded bytes from the header ----------


def _float64_rgb_tiff(side: int) -> bytes:
    """A Deflate-compressed float64 RGB TIFF of side × side zero pixels, written tile by tile (the whole
    array never exists in the test either): at side 2560 about 156 KB that decodes to 150 MiB."""
    tile = np.zeros((256, 256, 3), np.float64)
    buf = io.BytesIO()
    tiles = (tile for _ in range((side // 256) ** 2))
    tifffile.imwrite(
        buf, tiles, shape=(side, side, 3), dtype=np.float64, photometric="rgb", compression="zlib", tile=(256, 256)
    )
    return buf.getvalue()


def test_float64_rgb_tiff_refused_from_its_header(no_decoding: list[str]) -> None:
    """The issue's example: before, this ~156 KB upload was decoded in full (157 MiB traced, 1.35 s)
    and only then refused for its sample type."""
    data = _float64_rgb_tiff(2560)
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        err = _refused("bad_dtype", decode_rgb, data, DecodeLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "TIFF image samples are float64" in str(err)
    assert no_decoding == []
    assert peak < 2 * 1024 * 1024  # the decoded image alone would be 150 MiB


def _decoded_limit_refuses(fn: Any, data: bytes, decoded: int) -> None:
    """`data` decodes at exactly `decoded` bytes: accepted at that limit, refused from the header one below."""
    fn(data, dataclasses.replace(LIMITS, max_decoded_bytes=decoded))
    err = _refused("too_large", fn, data, dataclasses.replace(LIMITS, max_decoded_bytes=decoded - 1))
    assert f"{decoded:,} bytes once decoded" in str(err) and f"{decoded - 1:,} bytes" in str(err)


def test_decoded_bytes_limit_for_every_format(rng: np.random.Generator) -> None:
    rgba16 = rng.integers(0, 65536, (12, 10, 4), dtype=np.uint16)
    _decoded_limit_refuses(decode_rgb, _png(rgba16), 12 * 10 * 4 * 2)
    _decoded_limit_refuses(decode_rgb, _png(rgba16[:, :, 0].astype(np.uint8)), 12 * 10)
    _decoded_limit_refuses(decode_rgb, _jpeg(rgba16[:, :, :3].astype(np.uint8)), 12 * 10 * 3)
    progressive = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    _decoded_limit_refuses(decode_rgb, progressive.tobytes(), 16 * 16 * 3 * 3)  # pixels + 2-byte coefficients
    _decoded_limit_refuses(decode_rgb, _tiff(rgba16, photometric="rgb", extrasamples=["unassalpha"]), 12 * 10 * 4 * 2)
    xyz64 = rng.normal(size=(6, 5, 3))
    _decoded_limit_refuses(decode_xyz, _tiff(xyz64, compression="zlib"), 6 * 5 * 3 * 8)
    _decoded_limit_refuses(decode_xyz, _npy(xyz64.astype(np.float32)), 6 * 5 * 3 * 4)


def test_jpeg_frame_type_and_components_and_png_methods_checked_from_header(no_decoding: list[str]) -> None:
    jpeg = bytearray(_jpeg(np.zeros((8, 8, 3), np.uint8)))
    sof = jpeg.index(b"\xff\xc0")
    lossless = bytes(jpeg[: sof + 1]) + b"\xc3" + bytes(jpeg[sof + 2 :])
    assert "SOF3" in str(_refused("unsupported_format", decode_rgb, lossless))
    jpeg[sof + 9] = 4  # component count: CMYK / YCCK
    assert "4 components" in str(_refused("bad_shape", decode_rgb, bytes(jpeg)))
    png = bytearray(_png(np.zeros((4, 4, 3), np.uint8)))
    png[26] = 1  # IHDR compression method: only 0 (Deflate) exists
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    assert "compression 1" in str(_refused("unsupported_format", decode_rgb, bytes(png)))
    assert no_decoding == []


def test_settings_carry_the_decoded_bytes_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import decode_limits, get_settings

    monkeypatch.setenv("BRIDGENET_MAX_DECODED_BYTES", "1000")
    assert decode_limits(get_settings()).max_decoded_bytes == 1000
    monkeypatch.setenv("BRIDGENET_MAX_DECODED_BYTES", "0")
    with pytest.raises(ValueError, match="BRIDGENET_MAX_DECODED_BYTES"):
        get_settings()
    assert DecodeLimits().max_decoded_bytes == 4096 * 4096 * 3 * 4
