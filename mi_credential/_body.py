"""Read a response body, decoded, within a size limit that applies to the decoded bytes.

Requests go out with ``Accept-Encoding: identity`` and aiohttp's own decompression off (it
inflates what it receives without a bound, so a 200 KB gzip body becomes 200 MB before any
limit is looked at). A server that compresses all the same is decoded here, ``gzip`` and
``deflate`` only, at most :data:`_STEP` output bytes at a time, and reading stops as soon as the
decoded body exceeds the limit: whatever the compression ratio, no more than the limit and one
step is ever held. A body in another encoding (``br``, ``zstd``, stacked encodings), or whose
compressed stream is broken, cut off or followed by more bytes, is read as empty: no token can
come of it, and none of it is passed on as if it were text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import zlib

    import aiohttp

#: Decoded bytes produced per decompression step, and the size of each read from the stream.
_STEP = 64 * 1024


class Body(NamedTuple):
    """A response body as read."""

    data: bytes = b""
    too_large: bool = False
    """The body, decoded, exceeded the limit; ``data`` is empty."""


class _Inflater:
    """Incremental ``gzip`` or ``deflate`` decoding into a buffer, never past a limit."""

    __slots__ = ("_decompressor", "_gzip", "failed")

    def __init__(self, *, gzip: bool) -> None:
        self._gzip = gzip
        self._decompressor: zlib._Decompress | None = None
        self.failed = False
        """The stream is broken, or more bytes followed its end."""

    @property
    def finished(self) -> bool:
        """The whole compressed stream was decoded."""
        return self._decompressor is not None and self._decompressor.eof

    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        """Decode ``data`` onto ``out``; stop once ``out`` holds more than ``limit`` bytes."""
        import zlib

        if not data:
            return
        decompressor = self._decompressor
        if decompressor is None:
            if self._gzip:
                wbits = 16 + zlib.MAX_WBITS
            else:  # zlib-wrapped as specified, or raw deflate as some servers send it
                wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
            decompressor = self._decompressor = zlib.decompressobj(wbits)
        elif decompressor.eof:
            self.failed = True
            return
        try:
            while data and len(out) <= limit:
                out += decompressor.decompress(data, min(_STEP, limit + 1 - len(out)))
                data = decompressor.unconsumed_tail
                if decompressor.eof:
                    self.failed = bool(decompressor.unused_data)
                    return
        except zlib.error:
            self.failed = True


def _codings(values: list[str]) -> list[str]:
    """The content codings of ``Content-Encoding`` header values, ``identity`` left out."""
    tokens = (part.strip().lower() for value in values for part in value.split(","))
    return [token for token in tokens if token and token != "identity"]


async def read_body(response: aiohttp.ClientResponse, limit: int) -> Body:
    """Read ``response``'s body, decoded, if it is no larger than ``limit`` bytes.

    The response is closed (its connection dropped, not reused) when reading stops early.
    """
    codings = _codings(response.headers.getall("Content-Encoding", []))
    inflater: _Inflater | None = None
    if codings:
        if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
            response.close()
            return Body()
        inflater = _Inflater(gzip=codings[0] != "deflate")
    length = response.content_length
    if length is not None and length > limit:
        response.close()
        return Body(too_large=True)
    out = bytearray()
    async for chunk in response.content.iter_chunked(_STEP):
        if inflater is None:
            out += chunk
        else:
            inflater.feed(chunk, out, limit)
            if inflater.failed:
                response.close()
                return Body()
        if len(out) > limit:
            response.close()
            return Body(too_large=True)
    if inflater is not None and not inflater.finished:
        return Body()  # the compressed stream was cut off (or there was none)
    return Body(bytes(out))
