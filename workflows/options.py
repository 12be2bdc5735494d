"""Operator-side configuration of the engine: tools, egress policy, model defaults.

The egress allow-list and the secrets' targets are parsed here, once, when the settings are
made (`ToolSettings.allow_entries`, `secret_entries`); `egress.py` only applies them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a host name or a network, optionally one port."""

    name: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """An entry of the egress allow list: a host name or network, with an optional port."""
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
        """Whether the entry allows this host, port and address."""
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return self.name == host
        assert self.network is not None
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class SecretTarget:
    """Where a `tool_secrets` key lets its headers go: https to a host (or network) and port, under a path.

    `path` is a prefix of whole segments: "/v1" covers "/v1" and "/v1/...", never "/v1beta". Under any prefix
    but "/", a request's path must be plain (`_plain`): servers decode, trim and normalise the rest (escaped
    dots, slashes and semicolons, double escapes, control and non-ASCII bytes, dot segments) in ways no check
    here can know."""

    entry: AllowEntry
    path: str = "/"
    methods: frozenset[str] | None = None  # None: any a tool may send

    def reaches(self, method: str, host: str, port: int, address: IPAddress | None) -> bool:
        """Whether an https `method` request to `host`:`port` (`address`: the host as an IP literal) is one the
        key names, whatever its path."""
        if (self.entry.port or 443) != port or (self.methods is not None and method.upper() not in self.methods):
            return False
        if self.entry.name is not None:
            return self.entry.name == host
        return address is not None and self.entry.permits(host, port, address)

    def covers(self, raw_path: str) -> bool:
        """Whether a request the key `reaches` for `raw_path` (as sent, without its query) gets the headers."""
        if self.path == "/":
            return True
        return _plain(raw_path) and (raw_path == self.path or raw_path.startswith(self.path + "/"))


SECRET_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})  # a key may name these
# A key's path: segments of these characters only (no escapes, no dot segments, no query).
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,=:@/")
# In a request's path, besides those: ";" (a segment's parameters) and escapes of these only, which every
# server decodes alike (never a dot, slash, backslash, semicolon, percent, control or non-ASCII byte).
_ESCAPABLE = _PATH_CHARS - {".", "/"}
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _plain(raw_path: str) -> bool:
    """Whether a request's path means one thing to every server: no segment of dots only (also behind ";"),
    only `_PATH_CHARS`, ";" and escapes of `_ESCAPABLE`."""
    if not all(c in _PATH_CHARS or c in ";%" for c in raw_path):
        return False
    unescaped = _ESCAPE.sub(lambda m: "" if chr(int(m.group(1), 16)) in _ESCAPABLE else "%", raw_path)
    if "%" in unescaped:  # an escape of anything else, or a "%" that starts none
        return False
    return not any(_dots(segment.split(";", 1)[0]) for segment in raw_path.split("/"))


def _dots(segment: str) -> bool:
    """A segment of dots only: ".", "..", and "..." (which some servers trim to nothing)."""
    return segment != "" and set(segment) == {"."}


def _ambiguous(path: str) -> bool:
    """A key's path that is not plain: a segment of dots only (its characters are checked apart)."""
    return any(_dots(segment) for segment in path.split("/"))


# A secret key's host part (a network is checked apart): a name or an IP literal, and a port.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*\.?)(?::([0-9]{{1,5}}))?")


def secret_target(key: str) -> SecretTarget:
    """Where a `tool_secrets` key lets its headers go: `host`, `host:port`, `https://host[:port]`, or
    `https://host[:port]/path` (and beneath it only); a network (`10.0.0.0/8`) takes no path. Methods may
    come first, `GET,POST https://host/path`: requests of other methods get no headers."""
    text = key.strip()
    methods: frozenset[str] | None = None
    if " " in text:
        named, text = text.split(None, 1)
        methods = frozenset(m.strip().upper() for m in named.split(","))
        if not methods <= SECRET_METHODS:
            raise ValueError(f"{key!r}: methods are {', '.join(sorted(SECRET_METHODS))}, before the target")
        text = text.strip()
    scheme, sep, rest = text.partition("://")
    path = "/"
    if sep:
        if scheme.lower() != "https":
            raise ValueError(f"{key!r}: secrets go only over https")
        text = rest.rstrip("/")
        where, slash, tail = text.partition("/")
        if slash and not _is_network(text):
            path = "/" + tail
            if _is_network(f"{where}/{tail.split('/', 1)[0].split(':', 1)[0]}"):
                raise ValueError(f"{key!r}: a network takes no path (nor a port after its prefix length)")
            if any(c not in _PATH_CHARS for c in tail) or _ambiguous(path) or "//" in path:
                raise ValueError(f"{key!r}: a path of plain segments only (no escapes, '.', '..', '?' or '#')")
            text = where
    host = None if _is_network(text) else _HOST.fullmatch(text)
    if not text or (host is None and not _is_network(text)) or (host and host[2] and not 0 < int(host[2]) < 65536):
        raise ValueError(f"{key!r}: write 'host', 'host:port', 'https://host[:port]' or 'https://host[:port]/path'")
    return SecretTarget(AllowEntry.parse(text), path, methods)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


class SearchProvider(BaseModel):
    """A web-search endpoint the operator runs or pays for."""

    kind: Literal["searxng", "serper"]
    # searxng: the instance's base URL; serper: defaults to the public API.
    url: str = "https://google.serper.dev/search"
    api_key: SecretStr | None = None

    @property
    def endpoint(self) -> str:
        """The URL searches go to: a SearXNG instance's /search, Serper's API URL itself."""
        return self.url.rstrip("/") + "/search" if self.kind == "searxng" else self.url


class ToolSettings(BaseModel):
    """What tools this node offers and how tool HTTP may leave the machine."""

    search: SearchProvider | None = None
    reader_enabled: bool = False
    # Hosts ("api.example.com", "127.0.0.2", "127.0.0.1:8080") and CIDRs
    # ("10.1.0.0/16") tool requests may reach even though they are not public.
    egress_allow: list[str] = Field(default_factory=list)
    # "host", "host:port", "https://host[:port]" or "https://host[:port]/path", optionally after methods
    # ("GET,POST https://host/path") -> headers attached only to https requests to that host and port (443
    # unless named), under that path, of those methods; http:// is refused.
    secrets: dict[str, dict[str, SecretStr]] = Field(default_factory=dict)
    http_timeout_s: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=1_000_000, gt=0)
    max_redirects: int = Field(default=5, ge=0)

    _allow_entries: tuple[AllowEntry, ...] = PrivateAttr(default=())
    _secret_entries: tuple[tuple[SecretTarget, dict[str, SecretStr]], ...] = PrivateAttr(default=())

    @field_validator("secrets")
    @classmethod
    def _https_targets(cls, value: dict[str, dict[str, SecretStr]]) -> dict[str, dict[str, SecretStr]]:
        for key in value:
            secret_target(key)
        return value

    def model_post_init(self, context: object) -> None:
        """Parse the allow list and the secrets' targets once."""
        self._allow_entries = tuple(AllowEntry.parse(entry) for entry in self.egress_allow)
        self._secret_entries = tuple((secret_target(key), headers) for key, headers in self.secrets.items())

    @property
    def allow_entries(self) -> tuple[AllowEntry, ...]:
        """`egress_allow`, parsed."""
        return self._allow_entries

    @property
    def secret_entries(self) -> tuple[tuple[SecretTarget, dict[str, SecretStr]], ...]:
        """`secrets`: where each key's headers may go, and the headers."""
        return self._secret_entries


# Budgets a workflow cannot raise; an operator may tighten (or loosen) them.
DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_TIME_S = 3600.0
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TASK_TOKENS = 32768
DEFAULT_MEMORY_BYTES = 8 * 1024 * 1024
DEFAULT_RESULT_BYTES = 64 * 1024


def capped(wanted: float, cap: float | None) -> float:
    """A workflow's budget (`max_time`, `max_steps`) under the operator's cap (None: no cap)."""
    return min(wanted, cap) if cap is not None else wanted


class EngineOptions(BaseModel):
    """Model defaults and the budgets the operator allows a workflow to use."""

    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    seed: int | None = None
    max_tokens: int = Field(default=250, ge=1)  # when the workflow names none
    max_tokens_cap: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)  # per generation
    max_steps_cap: int | None = Field(default=DEFAULT_MAX_STEPS, ge=1)
    max_time_cap: float | None = Field(default=DEFAULT_MAX_TIME_S, gt=0, allow_inf_nan=False)
    # Completion tokens of all generations of one run together.
    max_task_tokens: int = Field(default=DEFAULT_TASK_TOKENS, ge=1)
    # Bytes one run may hold in its memory (cache, stacks, file store), checked on every write.
    max_memory_bytes: int = Field(default=DEFAULT_MEMORY_BYTES, ge=1024)
    # UTF-8 bytes of the result string; larger is a `result too large` error.
    max_result_bytes: int = Field(default=DEFAULT_RESULT_BYTES, ge=1)
    # maxLength put on every string a tool call may contain (small models loop).
    tool_arg_max_length: int = Field(default=200, ge=1)
