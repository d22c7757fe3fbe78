"""A multipart/form-data upload read as it streams in: the small fields first, then the file.

Starlette's `request.form()` spools the whole body to temporary files before a route sees any
of it, so a route could check who is sending only once it had stored everything they sent. A
`FormStream` hands the route the fields that come before the file part (each small, few, and
bounded in all) as soon as that part's headers arrive, having read at most the chunk that holds
them; the route decides, and only then are the file's bytes read, straight into a file of its
choosing, counted and cut off at its limit. Bad input is an `InvalidParameter` (or
`RequestTooLarge`), never a 500.

    async with FormStream(request) as form:
        fields, file = await form.fields()   # nothing of the file read yet
        ...check fields...
        size = await form.save_file(out, limit)
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import IO

from anyio import to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..errors import InvalidParameter, RequestTooLarge

__all__ = ["FilePart", "FormStream", "MAX_FIELDS", "MAX_FIELD_BYTES", "MAX_FORM_BYTES"]

MAX_FIELDS = 20
MAX_FIELD_BYTES = 8 << 10  # a certificate's policy is a few hundred bytes
MAX_FORM_BYTES = 64 << 10  # all but the file's own bytes: fields, part headers, boundaries
_WRITE_BATCH = 1 << 20  # file bytes gathered before one write in a worker thread


@dataclasses.dataclass(frozen=True)
class FilePart:
    """The headers of the file part."""

    filename: str
    content_type: str


class FormStream:
    """One multipart/form-data request body, parsed as it arrives.

    The part named `file_field` is the file (there may be one); every other part is a field of
    at most `max_field_bytes`, at most `max_fields` of them. Parts after the file are read and
    dropped, as OSS ignores them.
    """

    def __init__(self, request: Request, file_field: str = "file", *, max_fields: int = MAX_FIELDS,
                 max_field_bytes: int = MAX_FIELD_BYTES, max_form_bytes: int = MAX_FORM_BYTES) -> None:
        self._request = request
        self._file_field = file_field
        self._max_fields = max_fields
        self._max_field_bytes = max_field_bytes
        self._max_form_bytes = max_form_bytes
        self._chunks: AsyncGenerator[bytes, None] | None = None
        self._parser: MultipartParser | None = None
        self._fed = 0  # body bytes given to the parser
        self._fields: dict[str, str] = {}
        self._file: FilePart | None = None
        self._file_bytes = 0
        self._pending: list[bytes] = []  # file bytes parsed, not yet written
        self._pending_bytes = 0
        self._file_done = False
        self._ended = False  # the closing boundary was seen
        # The part being parsed.
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._part: str | None = None  # a field's name; None in the file or past it
        self._in_file = False
        self._value = bytearray()

    async def __aenter__(self) -> FormStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._chunks is not None:
            await self._chunks.aclose()

    def refuse_declared_over(self, file_limit: int) -> None:
        """RequestTooLarge when the declared Content-Length cannot hold a file within the limit,
        before a byte of the body is read."""
        declared = self._request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > file_limit + self._max_form_bytes:
            raise RequestTooLarge(f"the upload is {declared} bytes; the limit is {file_limit}")

    async def fields(self) -> tuple[dict[str, str], FilePart | None]:
        """The fields before the file part and that part's headers (None when the form has no
        file). Reads the body no further than the chunk holding the file part's headers."""
        while self._file is None and not self._ended:
            if not await self._read():
                raise InvalidParameter("the multipart form ends before its closing boundary")
        return dict(self._fields), self._file

    async def save_file(self, out: IO[bytes], limit: int) -> int:
        """Write the file part's bytes to `out` as they arrive; their count. RequestTooLarge as
        soon as they pass `limit`, with never more than `limit` bytes written."""
        if self._file is None:
            raise InvalidParameter(f"the form has no file field named {self._file_field!r}")
        self.refuse_declared_over(limit)
        while True:
            if self._file_bytes > limit:
                raise RequestTooLarge(f"the file is over the limit of {limit} bytes")
            if self._pending and (self._file_done or self._pending_bytes >= _WRITE_BATCH):
                data = b"".join(self._pending)
                self._pending, self._pending_bytes = [], 0
                await to_thread.run_sync(out.write, data)
            if self._ended:
                return self._file_bytes
            if not await self._read():
                what = "file" if not self._file_done else "form"
                raise InvalidParameter(f"the upload ends in the middle of the {what}")

    async def _read(self) -> bool:
        """Parse the next chunk of the body; False when the body has ended."""
        if self._chunks is None:
            self._parser = self._make_parser()
            self._chunks = self._request.stream()
        assert self._parser is not None
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            return False
        except ClientDisconnect:
            raise InvalidParameter("the client went away during the upload") from None
        if not chunk:  # Starlette's stream ends with an empty chunk
            return False
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise InvalidParameter(f"the upload is not a valid multipart form: {exc}") from None
        self._fed += len(chunk)
        if self._fed - self._file_bytes > self._max_form_bytes:
            raise RequestTooLarge(f"the form's fields are over {self._max_form_bytes} bytes")
        return True

    def _make_parser(self) -> MultipartParser:
        kind, options = parse_options_header(self._request.headers.get("content-type", ""))
        boundary = options.get(b"boundary", b"")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidParameter(
                f"the upload must be a multipart/form-data form with a file field named {self._file_field!r}")
        try:
            return MultipartParser(boundary, {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            })
        except FormParserError as exc:  # a boundary over 256 bytes
            raise InvalidParameter(f"the upload is not a valid multipart form: {exc}") from None

    # python-multipart's callbacks; what they raise comes out of `parser.write`.

    def _on_part_begin(self) -> None:
        self._headers, self._part, self._in_file = {}, None, False
        self._value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InvalidParameter("a part of the form has no Content-Disposition name")
        name = options[b"name"].decode("utf-8", "replace")
        if self._file_done:
            return  # past the file: dropped
        if name == self._file_field:
            self._in_file = True
            self._file = FilePart(
                filename=options.get(b"filename", b"").decode("utf-8", "replace"),
                content_type=self._headers.get(b"content-type", b"").decode("latin-1"),
            )
        elif name in self._fields:
            raise InvalidParameter(f"the form field {name!r} is given twice")
        elif len(self._fields) >= self._max_fields:
            raise InvalidParameter(f"the form has more than {self._max_fields} fields")
        else:
            self._part = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(data[start:end])
            self._pending_bytes += end - start
            self._file_bytes += end - start
        elif self._part is not None:
            if len(self._value) + end - start > self._max_field_bytes:
                raise InvalidParameter(f"the form field {self._part!r} is over {self._max_field_bytes} bytes")
            self._value += data[start:end]

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file, self._file_done = False, True
        elif self._part is not None:
            self._fields[self._part] = self._value.decode("utf-8", "replace")
        self._part = None

    def _on_end(self) -> None:
        self._ended = True
