"""Safe outbound HTTP for tools.

Every hop (the first request and each redirect, which we follow ourselves):
1. the host is resolved and every address must be public (not loopback,
   private, link-local, site-local, multicast, reserved, unspecified; IPv4 and
   IPv6; an IPv6 address embedding an IPv4 one, as IPv4-mapped/compatible, 6to4
   and NAT64 do, is judged by that IPv4 address too; Teredo is refused) unless
   the operator's allow-list names the host or a network holding the address;
2. the connection goes to the address that was checked (no second DNS lookup
   an attacker could rebind), with the original Host header and TLS SNI;
3. operator secrets are attached only to https hops to the host and port they
   were configured for.
Responses are capped in bytes as received (before any decompression) and again
once decoded, and the whole exchange in time. Error texts name the cause, never
the URL (it may come from the model or the task).
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import socket
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from workflows.errors import EgressRefusedError, ToolError
from workflows.meta_charset import meta_charset
from workflows.options import IPAddress, ToolSettings

if TYPE_CHECKING:  # imported on the first request: a process that runs no tool never loads it
    import httpx

log = structlog.get_logger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
# Headers a workflow may not set: they belong to the connection, not the request.
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
# Encodings we decode ourselves under the byte cap (httpx would decode uncapped).
_ACCEPT_ENCODING = "gzip, deflate"
_GZIP_WBITS = 16 + zlib.MAX_WBITS


_TEREDO = ipaddress.ip_network("2001::/32")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped/compatible, 6to4 or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet; an embedded IPv4 address decides for IPv6 forms that carry one."""
    if isinstance(address, ipaddress.IPv4Address):
        return _public_v4(address)
    if address in _TEREDO or address in _SITE_LOCAL or address in _NAT64_LOCAL:
        return False
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return _public_v4(embedded)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


@dataclass
class HttpResponse:
    """A tool's HTTP answer: status, URL and body text."""

    status: int
    url: str
    text: str
    content_type: str = ""  # the media type, lowercased, without parameters ("" when none was sent)


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ToolError(f"cannot resolve the tool's host: {e.strerror}") from None
    # Drop IPv6 scope ids ("fe80::1%eth0") before parsing.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


class EgressPolicy:
    """The operator's rules for where tool requests may go and what they carry."""

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings

    async def check(self, url: httpx.URL, *, trusted: bool = False) -> IPAddress:
        """The address to connect to for `url`; raises EgressRefusedError if not allowed."""
        if url.scheme not in ("http", "https") or not url.host:
            raise EgressRefusedError("tool request refused: only http(s) URLs with a host are allowed")
        host, port = url.host.lower(), _default_port(url)
        if not 0 < port < 65536:
            raise ToolError("tool request: invalid URL (port out of range)")
        addresses = await _resolve(host, port)
        if not trusted:
            for address in addresses:
                if not is_public(address) and not any(
                    e.permits(host, port, address) for e in self.settings.allow_entries
                ):
                    log.debug("egress refused", host=host, port=port, address=str(address))
                    raise EgressRefusedError(
                        "tool request refused: the address is not public (loopback, private, link-local, "
                        "site-local, multicast or reserved) and not in the operator's allow-list"
                    )
        return addresses[0]

    def secret_headers(self, url: httpx.URL) -> dict[str, str]:
        """Headers the operator configured for this https host and port (443 unless the key names one)."""
        if url.scheme != "https":
            return {}
        host, port = url.host.lower(), _default_port(url)
        literal = _ip_literal(host)
        headers: dict[str, str] = {}
        for entry, values in self.settings.secret_entries:
            if (entry.port or 443) != port:
                continue
            by_name = entry.name == host
            by_address = literal is not None and entry.network is not None and entry.permits(host, port, literal)
            if by_name or by_address:
                headers.update({k: v.get_secret_value() for k, v in values.items()})
        return headers


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def fetch(
    settings: ToolSettings,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    json_body: object = None,
    trusted: bool = False,
) -> HttpResponse:
    """One HTTP exchange under the egress policy. `trusted` skips the address
    check for the first hop only (an endpoint the operator configured)."""
    import httpx

    policy = EgressPolicy(settings)
    try:
        async with asyncio.timeout(settings.http_timeout_s):
            return await _exchange(
                policy, method, httpx.URL(url).copy_merge_params(params or {}), headers or {}, json_body, trusted
            )
    except TimeoutError:
        raise ToolError(f"tool request timed out after {settings.http_timeout_s:g} s") from None
    except httpx.InvalidURL:
        raise ToolError("tool request: invalid URL") from None
    except UnicodeError:  # a host label IDNA refuses, a header value that is not Latin-1
        raise ToolError("tool request: a host name or header value that cannot be encoded") from None
    except httpx.HTTPError as e:
        log.debug("egress failed", error=str(e))  # debug only: the text may hold the URL or a header value
        raise ToolError(f"tool request failed: {type(e).__name__}") from None


async def _exchange(
    policy: EgressPolicy, method: str, url: httpx.URL, headers: dict[str, str], json_body: object, trusted: bool
) -> HttpResponse:
    import httpx

    settings = policy.settings
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=settings.http_timeout_s) as client:
        for hop in range(settings.max_redirects + 1):
            address = await policy.check(url, trusted=trusted and hop == 0)
            hop_headers = httpx.Headers({k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS})
            hop_headers.update(policy.secret_headers(url))  # replaces same-named headers, any case
            hop_headers["Host"] = url.netloc.decode()  # we connect to the checked address
            hop_headers["Accept-Encoding"] = _ACCEPT_ENCODING
            pinned = url.copy_with(host=str(address))
            request = client.build_request(
                method,
                pinned,
                headers=hop_headers,
                json=json_body,
                extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
            )
            response = await client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location:
                    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                    body = await _read_capped(response, settings.max_response_bytes, media)
                    return HttpResponse(response.status_code, str(url), body, media)
            finally:
                await response.aclose()
            next_url = url.join(location)
            log.debug("egress redirected", frm=str(url), to=str(next_url), status=response.status_code)
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, json_body = "GET", None
            if (next_url.scheme, next_url.host, next_url.port) != (url.scheme, url.host, url.port):
                headers = {}  # the workflow's headers were meant for the first origin only
            url = next_url
    raise ToolError(f"tool request: too many redirects (more than {settings.max_redirects})")


async def _read_capped(response: httpx.Response, limit: int, media: str) -> str:
    """The body, at most `limit` bytes as received and at most `limit` bytes once decoded; `media`: its type."""
    data = bytearray()
    async for piece in response.aiter_raw():  # as received: before any Content-Encoding is undone
        data.extend(piece)
        if len(data) > limit:
            raise ToolError(f"tool response is larger than {limit} bytes")
    body = bytes(data)
    encodings = [e.strip().lower() for e in response.headers.get("content-encoding", "").split(",") if e.strip()]
    for encoding in reversed(encodings):  # the last one applied is undone first
        body = _decode(body, encoding, limit)
    codec, start = _body_codec(body, response.charset_encoding, media)
    return body[start:].decode(codec, errors="replace")


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
