"""service.api.forms.read_form: the uploads exactly as sent however the body is cut into chunks, and the
refusals of a malformed form."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.api.forms import MAX_FIELD_BYTES, FormFile, FormLimitError, FormLimits, read_form

KNOWN = ("rgb", "xyz", "part_id", "model", "recipe", "meas_id", "return_map")


def _body(files: dict[str, Any], data: dict[str, str]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://form/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def _read(body: bytes, content_type: str, chunk_sizes: list[int] | None = None, **kwargs: Any) -> Any:
    """read_form over `body` delivered in chunks of the given sizes (cycled), as uvicorn would stream it."""
    sizes = chunk_sizes or [len(body) or 1]
    chunks, at, k = [], 0, 0
    while at < len(body):
        chunks.append(body[at : at + sizes[k % len(sizes)]])
        at, k = at + sizes[k % len(sizes)], k + 1
    messages = iter(chunks)

    async def receive() -> dict[str, Any]:
        chunk = next(messages, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        "app": object(),
    }
    return asyncio.run(read_form(Request(scope, receive), FormLimits(), known=kwargs.get("known", KNOWN)))


@pytest.mark.parametrize("chunk_sizes", [None, [1], [7, 64 * 1024, 3], [65_536], [1000, 1]])
def test_uploads_arrive_byte_for_byte_however_the_body_is_cut(chunk_sizes: list[int] | None) -> None:
    rng = np.random.default_rng(5)
    # Random bytes, with the boundary's leading dashes and CRLFs inside the data as a parser's worst case.
    rgb = rng.bytes(20_000) + b"\r\n--\r\n--" + rng.bytes(3_000)
    xyz = b"\r\n" + rng.bytes(50_001)
    body, content_type = _body(
        {"rgb": ("a.png", rgb, "image/png"), "xyz": ("b.tiff", xyz, "image/tiff")},
        {"part_id": "Teil-ÄÖ-7", "return_map": "png"},
    )
    form = _read(body, content_type, chunk_sizes)
    assert form["rgb"] == FormFile("a.png", "image/png", rgb)
    assert form["xyz"] == FormFile("b.tiff", "image/tiff", xyz)
    assert form["part_id"] == "Teil-ÄÖ-7" and form["return_map"] == "png"
    assert sorted(form) == ["part_id", "return_map", "rgb", "xyz"]


def test_an_empty_file_is_an_empty_upload_not_a_missing_one() -> None:
    body, content_type = _body({"rgb": ("a.png", b"", "image/png")}, {})
    assert _read(body, content_type)["rgb"] == FormFile("a.png", "image/png", b"")


def test_limits_and_repeated_names_are_422() -> None:
    three = {name: (f"{name}.bin", b"x", "application/octet-stream") for name in ("rgb", "xyz", "model")}
    with pytest.raises(FormLimitError, match=r"Too many files\. Maximum number of files is 2"):
        _read(*_body(three, {}))
    with pytest.raises(FormLimitError, match="Too many fields"):
        _read(
            *_body({}, {"part_id": "a", "model": "b", "recipe": "r", "meas_id": "m", "return_map": "png", "rgb": "d"})
        )
    body = (
        b'--b\r\nContent-Disposition: form-data; name="part_id"\r\n\r\none\r\n'
        b'--b\r\nContent-Disposition: form-data; name="part_id"\r\n\r\ntwo\r\n--b--\r\n'
    )
    with pytest.raises(FormLimitError, match="'part_id' is given more than once"):
        _read(body, "multipart/form-data; boundary=b")
    with pytest.raises(FormLimitError, match="unknown form field 'modell'"):
        _read(*_body({}, {"modell": "typo"}))


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b", "name"),
        (b"no boundary here", "multipart/form-data", "Missing boundary"),
        (b"--b\r\nnot a header line\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b", "Invalid multipart"),
        (
            b'--b\r\nContent-Disposition: form-data; name="part_id"\r\n\r\n'
            + b"x" * (MAX_FIELD_BYTES + 1)
            + b"\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "maximum size",
        ),
    ],
)
def test_a_malformed_body_is_a_400(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(HTTPException, match=message) as caught:
        _read(body, content_type, [500])
    assert caught.value.status_code == 400


def test_a_url_encoded_body_gives_its_text_fields_only() -> None:
    form = _read(b"part_id=A-1&return_map=none", "application/x-www-form-urlencoded")
    assert form == {"part_id": "A-1", "return_map": "none"}
    assert _read(b"whatever", "text/plain") == {}
