"""Reading a multipart form under fixed limits: how many files and fields, and each name at most once.

Starlette's own defaults allow 1000 files and 1000 fields, and a repeated field silently replaces the
earlier one when read as a single value (a second `rgb` part would be scored instead of the first).
The predict route reads its form through `read_form`, so a request carrying more than the form declares
is refused (422) before any upload is decoded.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from service.api.errors import ApiError


class FormLimitError(ApiError):
    status, code = 422, "invalid_form"


@dataclass(frozen=True)
class FormLimits:
    """What one predict form may hold: the two uploads (rgb, xyz) and three text fields (model, part_id,
    map encoding)."""

    max_files: int = 2
    max_fields: int = 3


PREDICT_FORM = FormLimits()


async def read_form(request: Request, limits: FormLimits = PREDICT_FORM, known: Collection[str] = ()) -> FormData:
    """The request's form within `limits`; FormLimitError (422) for too many parts, a name given twice, or
    (when `known` is given) a field the form does not declare. The caller closes the form's files."""
    try:
        form = await request.form(max_files=limits.max_files, max_fields=limits.max_fields)
    except (MultiPartException, HTTPException) as exc:
        # Inside an app Starlette turns its MultiPartException into a 400 HTTPException; only the count
        # limits become 422 here, a malformed body or an oversized one keeps its own answer.
        message = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        if not message.startswith("Too many"):
            raise
        raise FormLimitError(
            f"{message} A request holds at most {limits.max_files} files and {limits.max_fields} fields"
        ) from exc
    names = [name for name, _ in form.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    unknown = sorted(set(names) - set(known)) if known else []
    if repeated or unknown:
        await form.close()
        problems = [f"form field {name!r} is given more than once" for name in repeated]
        problems += [f"unknown form field {name!r}; expected {', '.join(sorted(known))}" for name in unknown]
        raise FormLimitError("; ".join(problems))
    return form
