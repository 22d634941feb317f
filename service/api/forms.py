"""Reading the predict form under fixed limits, uploads kept in memory with one copy of each.

Starlette's own form reading allows 1000 files and 1000 fields, and a repeated field silently replaces the
earlier one when read as a single value (a second `rgb` part would be scored instead of the first). It also
writes every file's chunks into a spooled temporary file that the route then reads back: two copies of each
upload between the socket and the decoders, plus the file's reallocations while it grows. `read_form` parses
multipart bodies with python-multipart (the parser Starlette uses) directly: a file part is kept as the list
of the body chunks it arrived in (slices of whole chunks are the chunks themselves, no copy) and joined into
one `bytes` when the part ends, which the decoders then read through views. A request carrying more than the
form declares is refused (422) before any upload is decoded; the refusals and their messages are Starlette's
where it has one (a malformed body is a 400).
"""

from __future__ import annotations

import codecs
from collections.abc import Collection
from contextlib import aclosing
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from service.api.errors import ApiError

# A text field's largest size: Starlette's default for form parts (the predict form's fields are short).
MAX_FIELD_BYTES = 1024 * 1024


class FormLimitError(ApiError):
    status, code = 422, "invalid_form"


@dataclass(frozen=True)
class FormLimits:
    """What one predict form may hold: the two uploads (rgb, xyz) and five text fields (model, recipe,
    part_id, meas_id, map encoding)."""

    max_files: int = 2
    max_fields: int = 5


PREDICT_FORM = FormLimits()


@dataclass(frozen=True)
class FormFile:
    """One uploaded file of a form: its bytes exactly as sent."""

    filename: str
    content_type: str | None
    data: bytes


FormValue = FormFile | str


async def read_form(
    request: Request, limits: FormLimits = PREDICT_FORM, known: Collection[str] = ()
) -> dict[str, FormValue]:
    """The request's form within `limits`, by field name; FormLimitError (422) for too many parts, a name
    given twice, or (when `known` is given) a field the form does not declare. A body that is not
    multipart/form-data is read as Starlette reads it (URL-encoded fields, or no field at all)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        items = await _read_multipart(request, params, limits)
    else:  # no file can come this way: the route finds its uploads missing (422)
        try:
            form = await request.form(max_files=limits.max_files, max_fields=limits.max_fields)
        except HTTPException as exc:
            if not str(exc.detail).startswith("Too many"):
                raise
            raise _limit_error(str(exc.detail), limits) from exc
        items = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        await form.close()
    names = [name for name, _ in items]
    repeated = sorted({name for name in names if names.count(name) > 1})
    unknown = sorted(set(names) - set(known)) if known else []
    if repeated or unknown:
        problems = [f"form field {name!r} is given more than once" for name in repeated]
        problems += [f"unknown form field {name!r}; expected {', '.join(sorted(known))}" for name in unknown]
        raise FormLimitError("; ".join(problems))
    return dict(items)


def _limit_error(message: str, limits: FormLimits) -> FormLimitError:
    return FormLimitError(f"{message} A request holds at most {limits.max_files} files and {limits.max_fields} fields")


async def _read_multipart(
    request: Request, params: dict[bytes, bytes], limits: FormLimits
) -> list[tuple[str, FormValue]]:
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "Missing boundary in multipart.")
    parts = _Parts(limits, _charset(params.get(b"charset")))
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
        },
    )
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise HTTPException(400, "Invalid multipart data.") from exc
    except MultiPartException as exc:  # a part without a name, a text field over its size
        raise HTTPException(400, exc.message) from exc
    return parts.items


def _charset(value: bytes | None) -> str:
    try:
        return codecs.lookup((value or b"utf-8").decode("latin-1")).name
    except LookupError:
        return "latin-1"


def _decode_text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _Parts:
    """python-multipart's callbacks for one form: the parts as they complete, in order."""

    def __init__(self, limits: FormLimits, charset: str) -> None:
        self.items: list[tuple[str, FormValue]] = []
        self._limits, self._charset = limits, charset
        self._files = self._fields = 0
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    def on_part_begin(self) -> None:
        self._headers, self._chunks, self._size = {}, [], 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise MultiPartException('The Content-Disposition header field "name" must be provided.')
        self._name = _decode_text(options[b"name"], self._charset)
        if b"filename" in options:
            self._files += 1
            if self._files > self._limits.max_files:
                raise _limit_error(
                    f"Too many files. Maximum number of files is {self._limits.max_files}.", self._limits
                )
            self._filename = _decode_text(options[b"filename"], self._charset)
        else:
            self._fields += 1
            if self._fields > self._limits.max_fields:
                raise _limit_error(
                    f"Too many fields. Maximum number of fields is {self._limits.max_fields}.", self._limits
                )
            self._filename = None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        # A whole chunk's slice is the chunk itself (bytes), no copy. python-multipart may also hand over
        # its own look-behind buffer (a bytearray it reuses): bytes() takes a copy of that part.
        piece = data[start:end]
        self._chunks.append(piece if isinstance(piece, bytes) else bytes(piece))
        self._size += end - start
        if self._filename is None and self._size > MAX_FIELD_BYTES:
            raise MultiPartException(f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")

    def on_part_end(self) -> None:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        if self._filename is None:
            self.items.append((self._name, _decode_text(data, self._charset)))
        else:
            content_type = self._headers.get(b"content-type")
            self.items.append(
                (self._name, FormFile(self._filename, content_type.decode("latin-1") if content_type else None, data))
            )
