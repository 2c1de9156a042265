"""A streaming reader for ``multipart/related`` request bodies (RFC 2046 5.1, RFC 2387).

STOW-RS (PS3.18 8.6.1.2) sends each DICOM object as one part of a
``multipart/related; type="application/dicom"`` body. This reader takes the body as
the chunks the server receives and hands out one part at a time: its headers, then
its content in chunks, so a request is never held whole in memory.

Why not a library: ``python-multipart`` (the parser Starlette uses for forms) has a
generic streaming ``MultipartParser``, but it refuses a preamble before the first
delimiter (RFC 2046 allows one), its ``finalize()`` does not report a body that ends
before the closing delimiter (only its internal state tells), and its callback API
fits an ``async`` pull loop badly. Reading parts needs only ``bytes.find`` over a
buffer; doing it here keeps the error messages ours and the parser strict where it
matters (no closing delimiter, garbage after a delimiter) and tolerant elsewhere
(preamble, epilogue, transport padding, bare LF in the part headers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024
_MAX_BOUNDARY = 200  # RFC 2046 allows 70; be tolerant of long ones


class MultipartError(ValueError):
    """The body is not a well-formed multipart body; the message says where it is wrong."""


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed ``Content-Type`` value: ``type/subtype`` in lower case and its parameters."""

    mime: str
    params: dict[str, str]

    @classmethod
    def parse(cls, value: str) -> MediaType:
        """Parse ``type/subtype; name=value; name="quoted; value"`` (RFC 9110 8.3.1)."""
        mime, _, rest = value.partition(";")
        params: dict[str, str] = {}
        i, n = 0, len(rest)
        while i < n:
            while i < n and rest[i] in " \t;":
                i += 1
            eq = rest.find("=", i)
            if eq < 0:
                break
            name = rest[i:eq].strip().lower()
            i = eq + 1
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] == '"':
                out: list[str] = []
                i += 1
                while i < n and rest[i] != '"':
                    if rest[i] == "\\" and i + 1 < n:
                        i += 1
                    out.append(rest[i])
                    i += 1
                i += 1
                param = "".join(out)
            else:
                end = rest.find(";", i)
                end = n if end < 0 else end
                param = rest[i:end].strip()
                i = end
            if name:
                params[name] = param
        return cls(mime.strip().lower(), params)


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """The header fields of one part, names in lower case."""

    fields: dict[str, str]

    @property
    def content_type(self) -> str | None:
        return self.fields.get("content-type")


class MultipartReader:
    """Pull parts out of a multipart body arriving as ``chunks``.

    Use :meth:`next_part` for the headers of the next part (``None`` after the closing
    delimiter), then iterate :meth:`content` for its body before asking for the next
    part (content left unread is skipped).
    """

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        if not boundary or len(boundary) > _MAX_BOUNDARY or boundary.endswith(" "):
            raise MultipartError(f"boundary {boundary!r} is not valid (RFC 2046 5.1.1)")
        try:
            self._delimiter = b"\r\n--" + boundary.encode("ascii")
        except UnicodeEncodeError:
            raise MultipartError(f"boundary {boundary!r} is not ASCII") from None
        self._chunks = chunks
        # The body's first delimiter needs no CRLF before it: pretend one was there.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._received = 0
        self._state = "preamble"  # preamble | headers | content | done

    @property
    def received(self) -> int:
        """Bytes of body read so far."""
        return self._received

    async def _fill(self) -> bool:
        """Read another chunk into the buffer; False at the end of the body."""
        while not self._eof:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                self._received += len(chunk)
                self._buf += chunk
                return True
        return False

    async def next_part(self) -> PartHeaders | None:
        """The headers of the next part, or None once the closing delimiter is read."""
        if self._state == "done":
            return None
        if self._state == "content":
            async for _ in self.content():
                pass
        if self._state == "preamble":
            await self._skip_preamble()
        if await self._after_delimiter():
            self._state = "done"
            return None
        headers = await self._read_headers()
        self._state = "content"
        return headers

    async def content(self) -> AsyncIterator[bytes]:
        """The body of the current part, in chunks, up to the next delimiter."""
        if self._state != "content":
            return
        delimiter = self._delimiter
        keep = len(delimiter) - 1  # a delimiter may straddle two chunks
        while True:
            at = self._buf.find(delimiter)
            if at >= 0:
                if at:
                    yield bytes(self._buf[:at])
                del self._buf[: at + len(delimiter)]
                self._state = "delimiter"
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                yield bytes(self._buf[:cut])
                del self._buf[:cut]
            if not await self._fill():
                raise MultipartError(
                    f"the body ends inside a part, before the closing delimiter "
                    f"--{delimiter[4:].decode()}--"
                )

    async def _skip_preamble(self) -> None:
        delimiter = self._delimiter
        while True:
            at = self._buf.find(delimiter)
            if at >= 0:
                del self._buf[: at + len(delimiter)]
                self._state = "delimiter"
                return
            if len(self._buf) >= len(delimiter):
                del self._buf[: len(self._buf) - len(delimiter) + 1]
            if not await self._fill():
                if self._received == 0:
                    raise MultipartError("the body is empty")
                raise MultipartError(
                    f"no delimiter --{delimiter[4:].decode()} in the body: "
                    "does the boundary parameter match the body?"
                )

    async def _after_delimiter(self) -> bool:
        """Consume what follows a delimiter; True for the closing one (``--``)."""
        while len(self._buf) < 2 and await self._fill():
            pass
        if self._buf[:2] == b"--":
            self._buf.clear()  # the epilogue is ignored (RFC 2046 5.1.1)
            return True
        # Transport padding (linear white space) may come before the CRLF.
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                break
            if len(self._buf) > 1024 or not await self._fill():
                raise MultipartError("a delimiter is not followed by a line break")
        line = bytes(self._buf[:end]).rstrip(b"\r")
        if line.strip(b" \t"):
            raise MultipartError(f"unexpected {line[:40]!r} after a delimiter")
        del self._buf[: end + 1]
        return False

    async def _read_headers(self) -> PartHeaders:
        while True:
            if self._buf[:2] == b"\r\n" or self._buf[:1] == b"\n":
                del self._buf[: 2 if self._buf[:1] == b"\r" else 1]
                return PartHeaders({})
            end, size = self._buf.find(b"\r\n\r\n"), 4
            lf_end = self._buf.find(b"\n\n")
            if lf_end >= 0 and (end < 0 or lf_end < end):
                end, size = lf_end, 2
            if end >= 0:
                break
            if len(self._buf) > MAX_HEADER_BYTES:
                raise MultipartError(f"part headers longer than {MAX_HEADER_BYTES} bytes")
            if not await self._fill():
                raise MultipartError("the body ends inside the headers of a part")
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + size]
        fields: dict[str, str] = {}
        for raw in block.replace("\r\n", "\n").split("\n"):
            if raw[:1] in (" ", "\t") and fields:  # obsolete line folding
                last = next(reversed(fields))
                fields[last] += " " + raw.strip()
                continue
            name, colon, value = raw.partition(":")
            if not colon or not name.strip():
                raise MultipartError(f"part header line {raw[:60]!r} is not 'Name: value'")
            fields[name.strip().lower()] = value.strip()
        return PartHeaders(fields)
