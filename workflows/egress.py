"""Safe outbound HTTP for tools.

Every hop (the first request and each redirect, which we follow ourselves):
1. the host is resolved and every address must be public (not loopback,
   private, link-local, multicast, reserved, unspecified; IPv4 and IPv6) unless
   the operator's allow-list names the host or a network holding the address;
2. the connection goes to the address that was checked (no second DNS lookup
   an attacker could rebind), with the original Host header and TLS SNI;
3. operator secrets are attached only when the hop's host is configured for them.
Responses are capped in bytes and the whole exchange in time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx
import structlog

from workflows.errors import EgressRefusedError, ToolError
from workflows.options import ToolSettings

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = {301, 302, 303, 307, 308}
# Headers a workflow may not set: they belong to the connection, not the request.
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a host name or a network, optionally one port."""

    name: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        text = text.strip().lower()
        port: int | None = None
        if "/" not in text:
            host, sep, tail = text.rpartition(":")
            # "host:port" / "[v6]:port" carry a port; a bare IPv6 address does not.
            if sep and tail.isdigit() and (host.endswith("]") or ":" not in host):
                text, port = host, int(tail)
        text = text.strip("[]")
        try:
            return cls(name=None, network=ipaddress.ip_network(text, strict=False), port=port)
        except ValueError:
            return cls(name=text, network=None, port=port)

    def permits(self, host: str, port: int, address: IPAddress) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return self.name == host
        assert self.network is not None
        return address.version == self.network.version and address in self.network


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet (mapped IPv4 unwrapped)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


@dataclass
class HttpResponse:
    status: int
    url: str
    text: str


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ToolError(f"cannot resolve host {host!r}: {e.strerror}") from None
    # Drop IPv6 scope ids ("fe80::1%eth0") before parsing.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


class EgressPolicy:
    """The operator's rules for where tool requests may go and what they carry."""

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings
        self.allow = [AllowEntry.parse(e) for e in settings.egress_allow]

    async def check(self, url: httpx.URL, *, trusted: bool = False) -> IPAddress:
        """The address to connect to for `url`; raises EgressRefusedError if not allowed."""
        if url.scheme not in ("http", "https") or not url.host:
            raise EgressRefusedError(f"refused {url}: only http(s) URLs with a host are allowed")
        host, port = url.host.lower(), _default_port(url)
        addresses = await _resolve(host, port)
        if not trusted:
            for address in addresses:
                if not is_public(address) and not any(e.permits(host, port, address) for e in self.allow):
                    raise EgressRefusedError(
                        f"refused {url.scheme}://{url.netloc.decode()}: address {address} is not public "
                        "(loopback, private, link-local, multicast or reserved) and not in the operator's allow-list"
                    )
        return addresses[0]

    def secret_headers(self, url: httpx.URL) -> dict[str, str]:
        """Headers the operator configured for exactly this host (or host:port)."""
        host, port = url.host.lower(), _default_port(url)
        literal = _ip_literal(host)
        headers: dict[str, str] = {}
        for key, values in self.settings.secrets.items():
            entry = AllowEntry.parse(key)
            by_name = entry.name == host and entry.port in (None, port)
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
    policy = EgressPolicy(settings)
    try:
        async with asyncio.timeout(settings.http_timeout_s):
            return await _exchange(policy, method, httpx.URL(url).copy_merge_params(params or {}), headers or {}, json_body, trusted)
    except TimeoutError:
        raise ToolError(f"request to {url} timed out after {settings.http_timeout_s:g} s") from None
    except httpx.InvalidURL as e:
        raise ToolError(f"invalid URL {url!r}: {e}") from None
    except httpx.HTTPError as e:
        raise ToolError(f"request to {url} failed: {type(e).__name__}: {e}") from None


async def _exchange(
    policy: EgressPolicy, method: str, url: httpx.URL, headers: dict[str, str], json_body: object, trusted: bool
) -> HttpResponse:
    settings = policy.settings
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=settings.http_timeout_s) as client:
        for hop in range(settings.max_redirects + 1):
            address = await policy.check(url, trusted=trusted and hop == 0)
            hop_headers = httpx.Headers({k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS})
            hop_headers.update(policy.secret_headers(url))  # replaces same-named headers, any case
            hop_headers["Host"] = url.netloc.decode()  # we connect to the checked address
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
                    body = await _read_capped(response, settings.max_response_bytes, url)
                    return HttpResponse(response.status_code, str(url), body)
            finally:
                await response.aclose()
            next_url = url.join(location)
            log.debug("egress_redirect", frm=str(url), to=str(next_url), status=response.status_code)
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, json_body = "GET", None
            if (next_url.scheme, next_url.host, next_url.port) != (url.scheme, url.host, url.port):
                headers = {}  # the workflow's headers were meant for the first origin only
            url = next_url
    raise ToolError(f"too many redirects (more than {settings.max_redirects}) starting at {url}")


async def _read_capped(response: httpx.Response, limit: int, url: httpx.URL) -> str:
    data = bytearray()
    async for piece in response.aiter_bytes():
        data.extend(piece)
        if len(data) > limit:
            raise ToolError(f"response from {url} is larger than {limit} bytes")
    return data.decode(response.encoding or "utf-8", errors="replace")
