"""Upload bytes → arrays: RGB images (PNG/JPEG/TIFF) and organized point clouds (TIFF/NPY), within limits."""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import tifffile
from numpy.lib import format as npy_format

# Magic bytes → format; TIFF in both byte orders, classic and BigTIFF.
_MAGICS = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    *((magic, "tiff") for magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    (b"\x93NUMPY", "npy"),
)

# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (reserved) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
# PNG IHDR colour type → allowed bit depths (PNG spec, table 11.1).
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# TIFF compressions we decode: none, and Deflate behind a decompressed-size guard. The others need the
# `imagecodecs` package or decode in pure Python (PackBits) without any bound on the output size.
_TIFF_COMPRESSIONS = frozenset({1, 8, 32946})
# Gray (min-is-black) and RGB only: palette, min-is-white, CMYK and YCbCr TIFFs are rare from cameras.
_TIFF_PHOTOMETRICS = frozenset({1, 2})
# Image samples an RGB upload may hold (bilevel, 8- and 16-bit unsigned); anything else is refused from the
# header: a float64 RGB TIFF used to be decoded in full (157 MiB for a 156 KB file) before its refusal.
_RGB_SAMPLE_TYPES = frozenset({np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.uint16)})
# JPEG frame types OpenCV's libjpeg(-turbo) decodes with bounded work: baseline, extended and progressive
# Huffman. Progressive frames also keep every DCT coefficient (2 bytes per sample) until the last scan.
_JPEG_DECODABLE = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_JPEG_COEFFICIENT_BYTES = 2
# Caps on how many pieces a container may be cut into: each piece costs a Python-level step (a PNG chunk,
# a JPEG segment before the frame header, a TIFF strip or tile) or a pass of the decoder (a JPEG scan), so
# their number, not only the bytes, bounds the work. Cameras write a few hundred PNG chunks, about ten JPEG
# segments before the frame and ten progressive scans, and at most one strip per row per plane.
MAX_PNG_CHUNKS = 65_536
MAX_JPEG_SEGMENTS = 1_024
MAX_JPEG_SCANS = 256
MAX_TIFF_SEGMENTS = 65_536


@dataclass(frozen=True)
class DecodeLimits:
    """What one uploaded file may hold: encoded size in bytes, and image size declared by its header."""

    max_bytes: int = 64 * 1024 * 1024
    max_side: int = 4096
    max_pixels: int = 4096 * 4096
    # Bytes the decoded array may take, computed from the header (height × width × channels × bytes per
    # sample, plus a progressive JPEG's coefficient buffer) before decoding. The default is a float32
    # point cloud at `max_pixels`. The result is a further array of its own: 3 bytes per pixel for an
    # image, 12 for a point cloud (plus a transient uint32 copy when 16-bit samples are scaled).
    max_decoded_bytes: int = 4096 * 4096 * 3 * 4

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecodeLimits.{name} must be a positive int, got {value!r}")


class CodecError(ValueError):
    """An upload that cannot be decoded; `reason` is a stable machine label, `field` the form field."""

    reason: ClassVar[str] = "invalid"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class EmptyInputError(CodecError):
    reason = "empty"


class InputTooLargeError(CodecError):
    reason = "too_large"


class UnsupportedFormatError(CodecError):
    reason = "unsupported_format"


class CorruptInputError(CodecError):
    reason = "corrupt"


class BadDimensionsError(CodecError):
    reason = "bad_dimensions"


class BadDtypeError(CodecError):
    reason = "bad_dtype"


class BadShapeError(CodecError):
    reason = "bad_shape"


class BadValuesError(CodecError):
    reason = "bad_values"


def sniff_format(data: bytes) -> str | None:
    """Name the container from its magic bytes ("png", "jpeg", "tiff", "npy"); None when unknown."""
    return next((fmt for magic, fmt in _MAGICS if data.startswith(magic)), None)


def _check_bytes(field: str, data: object, limits: DecodeLimits, accepted: str) -> tuple[bytes, str]:
    """The upload as bytes (no copy when it is bytes) and its format, or an empty/size/format refusal."""
    if not isinstance(data, bytes | bytearray | memoryview):  # a caller bug, not a bad upload
        raise TypeError(f"{field}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise EmptyInputError(field, f"the upload is empty; expected a {accepted} file")
    if len(data) > limits.max_bytes:
        raise InputTooLargeError(field, f"the upload is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:8].hex(" ")
        raise UnsupportedFormatError(field, f"unrecognised file (first bytes {head}); expected {accepted}")
    return data, fmt


def _check_dims(field: str, fmt: str, height: int, width: int, limits: DecodeLimits) -> None:
    """Refuse a declared image size before anything of that size is allocated."""
    if height <= 0 or width <= 0:
        raise BadDimensionsError(field, f"{fmt} header declares {height}×{width} pixels; expected both > 0")
    if height > limits.max_side or width > limits.max_side or height * width > limits.max_pixels:
        raise InputTooLargeError(
            field,
            f"{fmt} header declares {height}×{width} pixels; the limit is {limits.max_side} px per side "
            f"and {limits.max_pixels:,} pixels",
        )


def _check_decoded_bytes(field: str, fmt: str, what: str, decoded: int, limits: DecodeLimits) -> None:
    """Refuse an upload whose decoded array (computed from its header) would pass `max_decoded_bytes`."""
    if decoded > limits.max_decoded_bytes:
        raise InputTooLargeError(
            field,
            f"{fmt} header declares {what}: {decoded:,} bytes once decoded; "
            f"the limit is {limits.max_decoded_bytes:,} bytes",
        )


# PNG colour type → channels OpenCV decodes to with IMREAD_UNCHANGED (a palette may expand to BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}


def _png_dims(field: str, data: bytes, limits: DecodeLimits) -> tuple[int, int]:
    """(height, width) from IHDR, which the PNG spec puts first, checked against `limits`; then every chunk
    must fit in the upload: OpenCV allocates a chunk's declared length before reading it (2 GiB for 200 B)."""
    if len(data) < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        raise CorruptInputError(field, "PNG without a valid IHDR chunk; expected a complete PNG file")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth not in _PNG_DEPTHS.get(colour, set()):
        raise CorruptInputError(field, f"PNG declares colour type {colour} with bit depth {depth}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):  # the only methods PNG defines
        raise UnsupportedFormatError(
            field, f"PNG declares compression {compression}, filter {filtering}, interlace {interlace}"
        )
    _check_dims(field, "PNG", height, width, limits)
    channels, sample_bytes = _PNG_CHANNELS[colour], 2 if depth == 16 else 1
    what = f"{height}×{width} pixels, {channels} channel(s) of {depth} bit"
    _check_decoded_bytes(field, "PNG", what, height * width * channels * sample_bytes, limits)
    i, n, chunks = 8, len(data), 0
    while i + 12 <= n:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise CorruptInputError(field, f"PNG holds more than {MAX_PNG_CHUNKS:,} chunks before IEND")
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        if i + 12 + length > n:
            raise CorruptInputError(
                field,
                f"PNG chunk {kind.decode('latin-1')!r} at byte {i} declares {length:,} bytes; "
                f"the file holds {n - i - 12:,} more",
            )
        if kind == b"IEND":
            return height, width
        i += 12 + length
    raise CorruptInputError(field, "PNG ends before its IEND chunk; the file is truncated")


@dataclass(frozen=True)
class _JpegFrame:
    """The first start-of-frame segment: frame type (the SOF marker), size, sample precision, components."""

    marker: int
    height: int
    width: int
    precision: int
    components: int


def _jpeg_frame(field: str, data: bytes) -> _JpegFrame:
    """The first start-of-frame segment's fields; nothing is decoded."""
    i, n, segments = 2, len(data), 0
    while i < n:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise CorruptInputError(
                field, f"JPEG holds more than {MAX_JPEG_SEGMENTS:,} segments before its frame header"
            )
        if data[i] != 0xFF:
            raise CorruptInputError(field, f"JPEG: expected a marker at byte {i}, got 0x{data[i]:02x}")
        while i < n and data[i] == 0xFF:  # markers may be padded with any number of 0xFF fill bytes
            i += 1
        if i >= n:
            break
        marker, i = data[i], i + 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: a frame header must come first
            raise CorruptInputError(field, "JPEG has no frame header (SOF) before its image data")
        length = int.from_bytes(data[i : i + 2], "big")  # a cut-off length reads short: refused below
        if length < 2:
            raise CorruptInputError(field, f"JPEG segment 0x{marker:02x} declares length {length}")
        if marker in _JPEG_SOF:
            if length < 8 or i + 8 > n:
                break
            # Segment: length (2), precision (1), height (2), width (2), component count (1), ...
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return _JpegFrame(marker, height, width, data[i + 2], data[i + 7])
        i += length
    raise CorruptInputError(field, "JPEG ends before its frame header (SOF); expected a complete file")


@dataclass(frozen=True)
class _TiffHeader:
    """The first page's tags (named as tifffile names them) as checked ints: fuzzed files put junk in any tag."""

    page: tifffile.TiffPage
    dtype: np.dtype | None  # None: a sample format / bit depth tifffile cannot map to numpy
    imagelength: int
    imagewidth: int
    imagedepth: int
    samplesperpixel: int
    compression: int
    predictor: int
    photometric: int
    planarconfig: int


def _read_tiff_header(field: str, data: bytes) -> _TiffHeader:
    """Parse the TIFF header and first IFD only; pixel data stays unread. Later pages are ignored."""
    try:
        page = tifffile.TiffFile(io.BytesIO(data)).pages.first
        if not isinstance(page, tifffile.TiffPage):
            raise TypeError("the first IFD is not an image page")
        tags = {f.name: getattr(page, f.name) for f in dataclasses.fields(_TiffHeader)[2:]}
        for name, value in tags.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"tag {name} holds {value!r}, not an integer")
        dtype = page.dtype if isinstance(page.dtype, np.dtype) else None
        return _TiffHeader(page, dtype, *(int(v) for v in tags.values()))
    except Exception as exc:  # tifffile raises many types (TiffFileError, struct.error, KeyError, ...)
        raise CorruptInputError(field, f"TIFF header could not be read ({exc})") from exc


def _tiff_name(enum: type[enum.IntEnum], value: int) -> str:
    """'LZMA (34925)' for a known tag value, the bare number otherwise."""
    return f"{enum(value).name} ({value})" if value in enum._value2member_map_ else str(value)


def _check_tiff(field: str, tiff: _TiffHeader, limits: DecodeLimits) -> np.dtype:
    _check_dims(field, "TIFF", tiff.imagelength, tiff.imagewidth, limits)
    if tiff.imagedepth != 1:
        raise BadShapeError(field, f"TIFF is a volume of depth {tiff.imagedepth}; expected a 2-D image")
    if tiff.compression not in _TIFF_COMPRESSIONS:
        name = _tiff_name(tifffile.COMPRESSION, tiff.compression)
        raise UnsupportedFormatError(field, f"TIFF compression {name} is not supported; expected none or Deflate")
    if tiff.predictor not in tifffile.TIFF.UNPREDICTORS:
        predictor = _tiff_name(tifffile.PREDICTOR, tiff.predictor)
        raise UnsupportedFormatError(field, f"TIFF predictor {predictor} is not supported")
    if tiff.dtype is None:
        raise BadDtypeError(field, "TIFF sample format / bit depth combination is not supported")
    return tiff.dtype


def _tiff_segments(field: str, data: bytes, tiff: _TiffHeader) -> list[tuple[int, int]]:
    """The strips' or tiles' (offset, byte count) pairs, each inside the file, none overlapping another,
    at most MAX_TIFF_SEGMENTS of them (empty ones, a sparse file's missing tiles, are left out). Without
    this check, 16,384 tiles pointing at one 30 MB range make the decoders read 16,384 × 30 MB."""
    try:
        offsets, counts = tiff.page.dataoffsets, tiff.page.databytecounts
        if len(offsets) != len(counts):
            raise ValueError(f"{len(offsets)} offsets for {len(counts)} byte counts")
    except (TypeError, ValueError) as exc:
        raise CorruptInputError(field, f"TIFF strip table is malformed ({exc})") from exc
    if len(offsets) > MAX_TIFF_SEGMENTS:
        raise InputTooLargeError(
            field, f"TIFF holds {len(offsets):,} strips or tiles; the limit is {MAX_TIFF_SEGMENTS:,}"
        )
    try:
        segments = sorted((int(o), int(c)) for o, c in zip(offsets, counts, strict=True) if int(c) != 0)
    except (TypeError, ValueError) as exc:
        raise CorruptInputError(field, f"TIFF strip table is malformed ({exc})") from exc
    end = 0
    for offset, count in segments:
        if offset < 0 or count < 0 or offset + count > len(data):
            raise CorruptInputError(
                field,
                f"TIFF strip or tile at byte {offset:,} of {count:,} bytes lies outside the {len(data):,}-byte file",
            )
        if offset < end:
            raise CorruptInputError(field, f"TIFF strips or tiles overlap at byte {offset:,}")
        end = offset + count
    # Inside the file and disjoint, so they sum to at most its size.
    return segments


def _guard_deflate(field: str, data: bytes, tiff: _TiffHeader, dtype: np.dtype) -> None:
    """Check the strip table (`_tiff_segments`), then refuse Deflate strips that inflate past the declared
    image size (a zip bomb) before tifffile inflates them without a bound. The trial costs one bounded
    extra inflate per strip, over views of the upload (no copy of its bytes)."""
    segments = _tiff_segments(field, data, tiff)
    if tiff.compression == 1:
        return
    budget = tiff.imagelength * tiff.imagewidth * tiff.samplesperpixel * dtype.itemsize
    view = memoryview(data)
    for offset, count in segments:
        try:
            inflated = zlib.decompressobj().decompress(view[offset : offset + count], budget + 1)
        except zlib.error as exc:
            raise CorruptInputError(field, f"TIFF Deflate data is corrupt ({exc})") from exc
        budget -= len(inflated)
        if budget < 0:
            raise InputTooLargeError(field, "TIFF Deflate data inflates past the declared image size")


def _read_tiff(field: str, data: bytes, tiff: _TiffHeader, dtype: np.dtype) -> np.ndarray:
    """Pixels of a checked page as (H, W) or (H, W, samples), planar layouts made interleaved."""
    _guard_deflate(field, data, tiff, dtype)
    try:
        pixels = tiff.page.asarray()
    except Exception as exc:  # any tifffile/numpy failure on malformed strips is a corrupt upload
        raise CorruptInputError(field, f"TIFF pixel data could not be decoded ({exc})") from exc
    if tiff.samplesperpixel > 1 and tiff.planarconfig == 2 and pixels.ndim == 3:
        pixels = np.moveaxis(pixels, 0, -1)  # separate planes (S, H, W) → interleaved (H, W, S)
    if pixels.shape[:2] != (tiff.imagelength, tiff.imagewidth):
        raise CorruptInputError(
            field, f"TIFF decoded to shape {pixels.shape}; header declared {tiff.imagelength}×{tiff.imagewidth}"
        )
    return pixels


def _to_rgb8(field: str, pixels: np.ndarray, bgr: bool) -> np.ndarray:
    """Any decoded image → (H, W, 3) uint8 RGB: gray replicated, alpha dropped, 16-bit scaled."""
    if pixels.dtype == np.bool_:  # bilevel TIFF
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype == np.uint16:
        # Full range maps to full range: round(v × 255 / 65535) == (v + 128) // 257 for every uint16 v.
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise BadDtypeError(field, f"image samples are {pixels.dtype}; expected 8- or 16-bit unsigned")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2] if pixels.ndim == 3 else -1
    if channels in (1, 2):  # gray, gray + alpha
        rgb = np.repeat(pixels[:, :, :1], 3, axis=2)
    elif channels in (3, 4) and bgr:  # colour (+ alpha) from OpenCV
        # cvtColor, not a reversed view + copy: 0.06 ms instead of 4 ms at 800×800 (docs/BENCHMARKS.md).
        code = cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGB
        rgb = cv2.cvtColor(np.ascontiguousarray(pixels), code)
    elif channels in (3, 4):
        rgb = pixels[:, :, :3]
    else:
        raise BadShapeError(field, f"image has shape {pixels.shape}; expected 1 to 4 channels")
    return np.ascontiguousarray(rgb)


def _check_tiff_bytes(field: str, tiff: _TiffHeader, dtype: np.dtype, limits: DecodeLimits) -> None:
    what = f"{tiff.imagelength}×{tiff.imagewidth} pixels, {tiff.samplesperpixel} samples of {dtype}"
    decoded = tiff.imagelength * tiff.imagewidth * tiff.samplesperpixel * dtype.itemsize
    _check_decoded_bytes(field, "TIFF", what, decoded, limits)


def _decode_rgb_tiff(field: str, data: bytes, limits: DecodeLimits) -> np.ndarray:
    tiff = _read_tiff_header(field, data)
    dtype = _check_tiff(field, tiff, limits)
    if tiff.photometric not in _TIFF_PHOTOMETRICS:
        name = _tiff_name(tifffile.PHOTOMETRIC, tiff.photometric)
        raise UnsupportedFormatError(field, f"TIFF photometric {name}; expected gray (MINISBLACK) or RGB")
    if not 1 <= tiff.samplesperpixel <= 4:
        raise BadShapeError(field, f"TIFF has {tiff.samplesperpixel} samples per pixel; expected 1 to 4")
    if dtype not in _RGB_SAMPLE_TYPES:
        raise BadDtypeError(field, f"TIFF image samples are {dtype}; expected 1-, 8- or 16-bit unsigned")
    _check_tiff_bytes(field, tiff, dtype, limits)
    return _to_rgb8(field, _read_tiff(field, data, tiff, dtype), bgr=False)


def _check_jpeg(field: str, data: bytes, limits: DecodeLimits) -> tuple[int, int]:
    """(height, width) of a JPEG whose frame type, precision, components and decoded size pass."""
    frame = _jpeg_frame(field, data)
    _check_dims(field, "JPEG", frame.height, frame.width, limits)
    kind = _JPEG_DECODABLE.get(frame.marker)
    if kind is None:  # lossless, hierarchical or arithmetic-coded: not what a camera writes
        raise UnsupportedFormatError(
            field, f"JPEG frame type SOF{frame.marker - 0xC0} is not supported; expected baseline or progressive"
        )
    if frame.precision != 8:
        raise BadDtypeError(field, f"JPEG has {frame.precision}-bit samples; expected 8-bit")
    if frame.components not in (1, 3):
        raise BadShapeError(field, f"JPEG has {frame.components} components; expected 1 (gray) or 3 (colour)")
    # Entropy-coded data stuffs every 0xFF byte with 0x00, so FF DA only ever starts a scan header: the count
    # is exact, and costs one pass in C. libjpeg decodes every scan of a progressive file in full.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise CorruptInputError(field, f"JPEG holds {scans:,} scans; the limit is {MAX_JPEG_SCANS:,}")
    per_sample = 1 + (_JPEG_COEFFICIENT_BYTES if kind == "progressive" else 0)
    what = f"{frame.height}×{frame.width} pixels, {frame.components} component(s), {kind}"
    _check_decoded_bytes(field, "JPEG", what, frame.height * frame.width * frame.components * per_sample, limits)
    return frame.height, frame.width


def decode_rgb(data: bytes | bytearray | memoryview, limits: DecodeLimits, field: str = "rgb") -> np.ndarray:
    """Decode a PNG, JPEG or TIFF upload into (H, W, 3) uint8 RGB.

    Gray is replicated to three channels, alpha is dropped (not composited), PNG palettes are expanded and
    16-bit samples are scaled to 8 bits. EXIF orientation is ignored on purpose: the point cloud is
    organized in sensor pixel order, so the image must stay in stored pixel order to line up with it.
    Size, sample type, bit depth, channels, compression and the decoded byte count are checked from the
    header against `limits` before any pixel is decoded.
    Raises a `CodecError` subclass for anything that is not a valid image within the limits.
    """
    data, fmt = _check_bytes(field, data, limits, "PNG, JPEG or TIFF")
    if fmt == "tiff":
        return _decode_rgb_tiff(field, data, limits)
    if fmt == "png":
        height, width = _png_dims(field, data, limits)
    elif fmt == "jpeg":
        height, width = _check_jpeg(field, data, limits)
    else:
        raise UnsupportedFormatError(field, f"got {fmt.upper()} data; expected PNG, JPEG or TIFF")
    try:
        # IMREAD_UNCHANGED keeps 16-bit depth and alpha, and skips EXIF rotation (see docstring).
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # cv2.error and friends on malformed streams
        raise CorruptInputError(field, f"{fmt.upper()} could not be decoded ({exc})") from exc
    if pixels is None:
        raise CorruptInputError(field, f"{fmt.upper()} could not be decoded; the file is damaged")
    if pixels.shape[:2] != (height, width):
        raise CorruptInputError(field, f"{fmt.upper()} decoded to {pixels.shape[:2]}; header declared {height}×{width}")
    return _to_rgb8(field, pixels, bgr=True)


def _decode_xyz_npy(field: str, data: bytes, limits: DecodeLimits) -> np.ndarray:
    stream = io.BytesIO(data)
    version = tuple(data[6:8])
    # 3.0 only exists for structured dtypes with non-latin-1 names: never a point cloud.
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise UnsupportedFormatError(field, f"NPY format version {version}; expected (1, 0) or (2, 0)")
    try:
        stream.seek(8)
        shape, _, dtype = readers[version](stream)
    except Exception as exc:  # ValueError / SyntaxError from a malformed header dictionary
        raise CorruptInputError(field, f"NPY header could not be read ({exc})") from exc
    if dtype.hasobject:
        raise BadDtypeError(field, f"NPY holds {dtype} objects, which need pickle (refused); expected float")
    if len(shape) != 3 or shape[2] != 3:
        raise BadShapeError(field, f"NPY array has shape {shape}; expected (H, W, 3)")
    _check_dims(field, "NPY", int(shape[0]), int(shape[1]), limits)
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise BadDtypeError(field, f"NPY array is {dtype}; expected float32 or float64")
    needed = int(np.prod(shape)) * dtype.itemsize
    _check_decoded_bytes(field, "NPY", f"{shape[0]}×{shape[1]}×3 {dtype}", needed, limits)
    available = len(data) - stream.tell()
    if available < needed:
        raise CorruptInputError(
            field, f"NPY is truncated: header declares {needed:,} data bytes, file holds {available:,}"
        )
    try:  # np.load honours Fortran order; decode_xyz copies to C order
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise CorruptInputError(field, f"NPY could not be read ({exc})") from exc


def _decode_xyz_tiff(field: str, data: bytes, limits: DecodeLimits) -> np.ndarray:
    tiff = _read_tiff_header(field, data)
    dtype = _check_tiff(field, tiff, limits)
    if tiff.samplesperpixel != 3:
        raise BadShapeError(field, f"TIFF has {tiff.samplesperpixel} samples per pixel; expected 3 (x, y, z)")
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise BadDtypeError(field, f"TIFF samples are {dtype}; expected float32 or float64")
    _check_tiff_bytes(field, tiff, dtype, limits)
    return _read_tiff(field, data, tiff, dtype)


def decode_xyz(data: bytes | bytearray | memoryview, limits: DecodeLimits, field: str = "xyz") -> np.ndarray:
    """Decode a TIFF or NPY organized point cloud into (H, W, 3) float32 (x, y, z per pixel).

    float32 and float64 are accepted (any byte order, C or Fortran order); NaN is kept as NaN (no
    point, as is 0). Infinite values, and float64 values beyond float32 range, are refused. NPY is
    read without pickle. The format comes from the magic bytes, never the filename; size, sample type,
    channels, compression and the decoded byte count are checked from the header before any data is read.
    Raises a `CodecError` subclass for anything that is not a valid point cloud within the limits.
    """
    data, fmt = _check_bytes(field, data, limits, "TIFF or NPY")
    if fmt == "tiff":
        array = _decode_xyz_tiff(field, data, limits)
    elif fmt == "npy":
        array = _decode_xyz_npy(field, data, limits)
    else:
        raise UnsupportedFormatError(field, f"got {fmt.upper()} data; expected TIFF or NPY")
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadShapeError(field, f"point cloud has shape {array.shape}; expected (H, W, 3)")
    # float64 beyond float32 range → inf, refused just below; signalling NaNs turn quiet without a warning.
    with np.errstate(over="ignore", invalid="ignore"):
        xyz = np.ascontiguousarray(array, dtype=np.float32)
    if np.isinf(xyz).any():  # any() first: counting costs a second pass, only worth it for the message
        n_inf = int(np.isinf(xyz).sum())
        raise BadValuesError(field, f"{n_inf} coordinates are infinite or overflow float32; expected finite, NaN or 0")
    return xyz
