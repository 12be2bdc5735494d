"""Safe outbound HTTP for tools: the network side, which the daemon runs for its execution processes.

Every hop (the first request and each redirect, which we follow ourselves):
1. the host is resolved and every address must be public (not loopback,
   private, link-local, site-local, multicast, reserved, unspecified; IPv4 and
   IPv6; an IPv6 address embedding an IPv4 one, as IPv4-mapped/compatible, 6to4
   and NAT64 do, is judged by that IPv4 address too; Teredo is refused) unless
   the operator's allow-list names the host or a network holding the address,
   or it is the first hop of a search request (to the operator's search endpoint);
2. the connection goes to the address that was checked (no second DNS lookup
   an attacker could rebind), with the original Host header and TLS SNI;
3. operator secrets (`tool_secrets`) are attached only to https hops to the
   host and port they were configured for (under the path, and of the methods,
   when the key names them), the search provider's key only to its search
   endpoint.
Responses are capped in bytes as received, and the whole exchange in time; the
body goes back undecoded (response_text.py decodes it where the workflow runs).
Error texts name the cause, never the URL (it may come from the model or the task).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from workflows.allowance import Allowance
from workflows.cpu_meter import metered
from workflows.errors import EgressRefusedError, ToolError
from workflows.options import IPAddress, ToolSettings
from workflows.tool_http import MAX_URL_CHARS, RawResponse, ToolRequest

if TYPE_CHECKING:  # imported on the first request: a process that makes none never loads it
    import httpx

log = structlog.get_logger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
# Headers a workflow may not set: they belong to the connection, not the request.
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
# Encodings response_text.py decodes under the byte cap (httpx would decode uncapped).
_ACCEPT_ENCODING = "gzip, deflate"
_SEARCH_KEY_HEADER = "X-API-KEY"  # serper's
# A body may arrive in this many pieces, and one more per PIECE_BYTES of it (_read_capped): each costs the loop its
# parse whatever its size; the CPU allowance below bounds the rest.
SMALL_PIECES = 1024
PIECE_BYTES = 256
# The CPU one Egress's requests may take of the thread they run on (the daemon's event loop): seconds a second, and
# at most this many at once. An honest request takes a few ms; a hostile server's headers of 100 KiB in 20,000
# lines took 85 ms a response, six responses a request with redirects.
CPU_PER_SECOND = 0.05
CPU_BURST = 0.5
_CPU_SPENT = "the requests of this process used their share of the node's CPU"


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


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class Resolver:
    """Host names resolved on threads of its own, at most `threads` at once, later lookups waiting for one.

    A name a hostile DNS server answers slowly holds its thread until the system's resolver gives up (seconds per
    name server), whatever awaits it: on the event loop's shared pool it would hold up every lookup and every task
    run there; here it holds one of this resolver's threads, the requests that share it waiting. They are daemon
    threads: a node that stops does not wait for one.
    """

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads
        self._free: asyncio.Semaphore | None = None  # made on the first lookup, in its event loop

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of `host` (a literal is its own); ToolError when it has none."""
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        if self._free is None:
            self._free = asyncio.Semaphore(self._threads)
        free, loop = self._free, asyncio.get_running_loop()
        await free.acquire()  # released when the thread ends, not when its caller gives up
        answer: asyncio.Future[list[Any]] = loop.create_future()
        try:
            threading.Thread(
                target=_look_up, args=(loop, answer, free, host, port), name="tool-dns", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had (the user's process limit)
            free.release()
            raise ToolError("cannot resolve the tool's host: no thread to look it up") from None
        try:
            infos = await answer
        except socket.gaierror as e:
            raise ToolError(f"cannot resolve the tool's host: {e.strerror}") from None
        # Drop IPv6 scope ids ("fe80::1%eth0") before parsing.
        return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _look_up(
    loop: asyncio.AbstractEventLoop, answer: asyncio.Future[list[Any]], free: asyncio.Semaphore, host: str, port: int
) -> None:
    """getaddrinfo on this thread; its outcome and the thread's slot go back to the event loop."""
    try:
        infos: list[Any] | None = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: BaseException | None = None
    except Exception as exc:  # noqa: BLE001 - whatever it is, the caller gets it
        infos, error = None, exc

    def settle() -> None:
        free.release()
        if not answer.done():
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(infos or [])

    with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile: nobody waits
        loop.call_soon_threadsafe(settle)


class EgressPolicy:
    """The operator's rules for where tool requests may go and what they carry."""

    def __init__(self, settings: ToolSettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver

    async def check(self, url: httpx.URL, *, trusted: bool = False) -> IPAddress:
        """The address to connect to for `url`; raises EgressRefusedError if not allowed."""
        if url.scheme not in ("http", "https") or not url.host:
            raise EgressRefusedError("tool request refused: only http(s) URLs with a host are allowed")
        host, port = url.host.lower(), _default_port(url)
        if not 0 < port < 65536:
            raise ToolError("tool request: invalid URL (port out of range)")
        addresses = await self.resolver.resolve(host, port)
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

    def is_search_provider(self, url: httpx.URL) -> bool:
        """Whether `url` is the operator's search endpoint: its origin (scheme, host and port) and path."""
        import httpx

        provider = self.settings.search
        if provider is None:
            return False
        try:
            endpoint = httpx.URL(provider.endpoint)
        except httpx.InvalidURL:
            return False
        return _origin(url) == _origin(endpoint) and url.raw_path.split(b"?")[0] == endpoint.raw_path.split(b"?")[0]

    def secret_headers(self, url: httpx.URL, method: str = "GET", *, search: bool = False) -> dict[str, str]:
        """Headers the operator configured for this https host and port (443 unless the key names one), path and
        method (where the key names them), and with `search`, the search provider's key on its own origin."""
        headers: dict[str, str] = {}
        provider = self.settings.search
        if search and provider is not None and provider.kind == "serper" and provider.api_key is not None:
            if self.is_search_provider(url):
                headers[_SEARCH_KEY_HEADER] = provider.api_key.get_secret_value()
        if url.scheme != "https":
            return headers
        host, port = url.host.lower(), _default_port(url)
        literal = _ip_literal(host)
        path = url.raw_path.split(b"?", 1)[0].decode("ascii", errors="replace")
        for target, values in self.settings.secret_entries:
            if not target.reaches(method, host, port, literal):
                continue
            if target.covers(path):
                headers.update({k: v.get_secret_value() for k, v in values.items()})
            elif path == target.path or path.startswith(target.path + "/"):  # under it, but not plain (options.py)
                log.debug("tool secret withheld: the request's path is not plain", host=host, prefix=target.path)
        return headers


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), _default_port(url)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class Egress:
    """Tool requests made from this process, under the egress policy: the daemon's for its execution processes
    (node/daemon/processes/tool_egress.py), or the engine's own when it runs alone. One per process: its own
    lookup threads (Resolver), and one TLS context (loading the CA bundle cost every request ~20 ms)."""

    def __init__(self, settings: ToolSettings, cpu: Allowance | None = None) -> None:
        self.settings = settings
        self._policy = EgressPolicy(settings, Resolver())
        self._tls: ssl.SSLContext | None = None  # made by the first request (httpx loads with it)
        # Of the thread its requests run on (cpu_meter.py): CPU_BURST at once, CPU_PER_SECOND after.
        self._cpu = cpu or Allowance(CPU_PER_SECOND, CPU_BURST)

    async def send(self, request: ToolRequest) -> RawResponse:
        """One HTTP exchange, its body as received. A `search` request must go to the operator's search endpoint:
        its first hop skips the address check (the operator configured it)."""
        import httpx

        settings = self.settings
        try:
            async with asyncio.timeout(settings.http_timeout_s):
                url = httpx.URL(request.url).copy_merge_params(request.params)
                if len(str(url)) > MAX_URL_CHARS:
                    raise ToolError(f"tool request: a URL longer than {MAX_URL_CHARS} characters with its query")
                if request.search and not self._policy.is_search_provider(url):
                    raise EgressRefusedError("tool request refused: a search request goes only to the search endpoint")
                if self._cpu.left() <= 0:
                    raise ToolError(f"tool request refused: {_CPU_SPENT}")
                address = await self._policy.check(url, trusted=request.search)  # before any client is made
                if self._tls is None:
                    _load_http_stack()
                    self._tls = httpx.create_ssl_context(trust_env=False)
                exchange = _exchange(self._policy, self._tls, request, url, address)
                return await metered(exchange, self._cpu, ToolError(f"tool request stopped: {_CPU_SPENT}"))
        except TimeoutError:
            raise ToolError(f"tool request timed out after {settings.http_timeout_s:g} s") from None
        except httpx.InvalidURL:
            raise ToolError("tool request: invalid URL") from None
        except UnicodeError:  # a host label IDNA refuses, a header value that is not Latin-1
            raise ToolError("tool request: a host name or header value that cannot be encoded") from None
        except httpx.HTTPError as e:
            log.debug("egress failed", error=str(e))  # debug only: the text may hold the URL or a header value
            raise ToolError(f"tool request failed: {type(e).__name__}") from None
        except ValidationError:  # an answer out of RawResponse's bounds (a header of 16 KiB)
            raise ToolError("tool request failed: the answer's headers are out of bounds") from None


def _load_http_stack() -> None:
    """Import what an exchange loads the first time it runs (httpcore, h11, anyio's asyncio backend), before the
    meter runs: the first request of a process was charged ~0.1 s of imports, a fifth of its CPU allowance."""
    import anyio._backends._asyncio  # noqa: F401
    import h11  # noqa: F401
    import httpcore  # noqa: F401


async def _exchange(
    policy: EgressPolicy, tls: ssl.SSLContext, request: ToolRequest, url: httpx.URL, address: IPAddress
) -> RawResponse:
    import httpx

    settings = policy.settings
    method, json_body, headers = request.method, request.json_body, dict(request.headers)
    async with httpx.AsyncClient(
        verify=tls,
        trust_env=False,
        follow_redirects=False,
        timeout=settings.http_timeout_s,
        limits=httpx.Limits(max_keepalive_connections=0),  # no connection outlives its hop: each names its host
    ) as client:
        for hop in range(settings.max_redirects + 1):
            if hop:
                address = await policy.check(url)
            hop_headers = httpx.Headers({k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS})
            hop_headers.update(
                policy.secret_headers(url, method, search=request.search)
            )  # replaces same-named, any case
            hop_headers["Host"] = url.netloc.decode()  # we connect to the checked address
            hop_headers["Accept-Encoding"] = _ACCEPT_ENCODING
            pinned = url.copy_with(host=str(address))
            if json_body is not None:
                hop_headers.setdefault("Content-Type", "application/json")  # a workflow's own is kept
            built = client.build_request(
                method,
                pinned,
                headers=hop_headers,
                content=None if json_body is None else json_body.encode(),
                extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
            )
            response = await client.send(built, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location:
                    return RawResponse(
                        status=response.status_code,
                        url=str(url),
                        content_type=response.headers.get("content-type", ""),
                        content_encoding=response.headers.get("content-encoding", ""),
                        body=await _read_capped(response, settings.max_response_bytes),
                    )
            finally:
                await response.aclose()
            next_url = url.join(location)
            log.debug("egress redirected", frm=str(url), to=str(next_url), status=response.status_code)
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, json_body = "GET", None
            if _origin(next_url) != _origin(url):
                headers = {}  # the workflow's headers were meant for the first origin only
            url = next_url
    raise ToolError(f"tool request: too many redirects (more than {settings.max_redirects})")


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body as received (before any Content-Encoding is undone), at most `limit` bytes, in at most
    SMALL_PIECES pieces more than one per PIECE_BYTES (each piece, a chunk of a chunked body or a read of a
    trickle, costs the event loop its parse: a million one-byte chunks took 10 s of it)."""
    data = bytearray()
    pieces = 0
    async for piece in response.aiter_raw():
        data.extend(piece)
        pieces += 1
        if len(data) > limit:
            raise ToolError(f"tool response is larger than {limit} bytes")
        if pieces > SMALL_PIECES + len(data) // PIECE_BYTES:
            raise ToolError("tool response arrives in too many small pieces")
    return bytes(data)
