"""A tool's HTTP answer as text: the body decompressed under the byte cap, then decoded as browsers decode it.

It runs where the workflow runs (the execution process), never where the network is (the daemon): the body is
a stranger's bytes, and undoing its encodings is work on them. Capped before decompression by egress.py, as
received, and again here once decoded.
"""

from __future__ import annotations

import codecs
import email.message
import zlib

from workflows.errors import ToolError
from workflows.meta_charset import meta_charset

_GZIP_WBITS = 16 + zlib.MAX_WBITS


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lowercased, without parameters ("" when none was sent)."""
    return content_type.partition(";")[0].strip().lower()


def body_text(body: bytes, content_type: str, content_encoding: str, limit: int) -> str:
    """A body as received, as text: its Content-Encodings undone (at most `limit` bytes each way), its charset
    found as browsers find it."""
    if len(body) > limit:
        raise ToolError(f"tool response is larger than {limit} bytes")
    encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
    for encoding in reversed(encodings):  # the last one applied is undone first
        body = _decode(body, encoding, limit)
    codec, start = _body_codec(body, _charset(content_type), media_type(content_type))
    return body[start:].decode(codec, errors="replace")


def _charset(content_type: str) -> str | None:
    """The charset parameter of a Content-Type header, as httpx reads it."""
    if not content_type:
        return None
    header = email.message.Message()
    header["content-type"] = content_type
    return header.get_content_charset(failobj=None)


# The charsets a response may name: codecs written in C, linear in the body. Any other (punycode is
# quadratic Python, 288 s for 1 MB; rot13, hex and idna are no text codecs) is passed over (_body_codec).
_TEXT_CODECS = frozenset(
    codecs.lookup(name).name
    for name in (
        "utf-8",
        "utf-8-sig",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "utf-32-le",
        "utf-32-be",
        "ascii",
        "latin-1",
        "iso8859-2",
        "iso8859-5",
        "iso8859-7",
        "iso8859-9",
        "iso8859-15",
        "cp1250",
        "cp1251",
        "cp1252",
        "cp1253",
        "cp1254",
        "cp1256",
        "koi8-r",
        "shift_jis",
        "euc_jp",
        "iso2022_jp",
        "gbk",
        "gb2312",
        "gb18030",
        "big5",
        "euc_kr",
    )
)


def _known_codec(charset: str | None) -> str | None:
    """The codec a charset label names when it is one of `_TEXT_CODECS`, else None."""
    if not charset:
        return None
    try:
        name = codecs.lookup(charset.strip()).name
    except (LookupError, ValueError):  # ValueError: a NUL in the label
        return None
    name = _WHATWG_SUPERSETS.get(name, name)
    return name if name in _TEXT_CODECS else None


# WHATWG Encoding maps these labels to a superset, as every browser reads them: a page that says iso-8859-1 (or
# ascii) and holds windows-1252's quotes and euro sign (0x80-0x9F) shows them, not C1 control characters.
_WHATWG_SUPERSETS = {"iso8859-1": "cp1252", "ascii": "cp1252", "iso8859-9": "cp1254"}


_UTF32 = frozenset({"utf-32", "utf-32-le", "utf-32-be"})
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF16_LE, "utf-16-le"))


def _body_codec(body: bytes, charset: str | None, media: str) -> tuple[str, int]:
    """The codec a body is read with and where its text starts, as browsers choose (WHATWG Encoding, "decode";
    HTML, "encoding sniffing"): a byte order mark wins, then the Content-Type charset, then for HTML (or a body
    sent without a type, which the reader takes for HTML) a `<meta>` charset in its first 1024 bytes, else UTF-8.
    Only `_TEXT_CODECS` are used; a charset that names another is passed over."""
    declared = _known_codec(charset)
    if declared in _UTF32 and body.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return declared, 0  # the named UTF-32 codec reads its own mark (FF FE 00 00 would read as UTF-16 below)
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return codec, len(bom)
    if declared is not None:
        return declared, 0
    if media in ("", "text/html"):
        return meta_charset(body, _known_codec) or "utf-8", 0
    return "utf-8", 0


def _decode(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, _GZIP_WBITS, limit)
    if encoding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
        try:
            return _inflate(body, zlib.MAX_WBITS, limit)
        except zlib.error:
            return _inflate(body, -zlib.MAX_WBITS, limit)
    raise ToolError("tool response has an unsupported content encoding (only gzip and deflate are accepted)")


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)  # never more than one byte past the cap
    except zlib.error as e:
        if wbits == zlib.MAX_WBITS:
            raise
        raise ToolError(f"tool response is not valid compressed data ({e})") from None
    if len(out) > limit:
        raise ToolError(f"tool response is larger than {limit} bytes once decompressed")
    return out
