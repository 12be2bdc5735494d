"""Settings layered as defaults < TOML file < environment < CLI flags, with errors that name the setting.

A subclass declares flat fields and an `env_prefix`; each field is then the TOML
key `max_queue`, the variable `<PREFIX>MAX_QUEUE` and the flag `--max-queue`.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsError,
    TomlConfigSettingsSource,
)

S = TypeVar("S", bound="LayeredSettings")


class ConfigError(Exception):
    """A setting is invalid or the config file cannot be read; the message names it."""


def split_list(value: Any) -> Any:
    """A JSON array or a comma-separated string from the environment, as a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


# Layers over TCP the node has no transport for (node/p2p/lean_libp2p.py leaves py-libp2p's WebSocket out).
NOT_PLAIN_TCP = frozenset({"ws", "wss", "tls", "sni"})


def _multiaddrs(value: list[str]) -> list[str]:
    from multiaddr import Multiaddr  # py-libp2p's parser: what the host would refuse (or dial for ever) is named now

    for addr in value:
        if not addr.startswith("/"):
            raise ValueError(f"{addr!r} is not a multiaddr (expected /ip4/HOST/tcp/PORT...)")
        if "/tcp/" not in addr:  # QUIC, WebSocket over UDP etc. are not part of the protocol
            raise ValueError(f"{addr!r} is no TCP multiaddr (expected /ip4/HOST/tcp/PORT...): the network speaks TCP")
        try:
            names = [protocol.name for protocol in Multiaddr(addr).protocols()]
        except Exception as exc:  # noqa: BLE001 - the library's parse errors have no common base we may rely on
            reason = str(exc).split(" (string: ", 1)[0].removeprefix(f"Invalid MultiAddr '{addr}': ")
            raise ValueError(f"{addr!r} is not a valid multiaddr: {reason}") from None
        if over_tcp := [name for name in names if name in NOT_PLAIN_TCP]:  # in the address's order
            raise ValueError(
                f"{addr!r} runs {'/'.join(over_tcp)} over TCP: the network speaks plain TCP with Noise "
                "(expected /ip4/HOST/tcp/PORT...; the node has no WebSocket or TLS transport)"
            )
    return value


# A list setting; the environment may give it as a JSON array or comma-separated.
StrList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


def _peer_addrs(value: list[str]) -> list[str]:
    for addr in value:
        if "/p2p/" not in addr:  # dialled without it, any key may answer, and a redial never learns whom it wants
            raise ValueError(f"{addr!r} names no peer (expected /ip4/HOST/tcp/PORT/p2p/PEER_ID)")
    return value


# A list of libp2p multiaddrs (/ip4/HOST/tcp/PORT[/p2p/ID]).
MultiaddrList = Annotated[StrList, AfterValidator(_multiaddrs)]
# A list of peers' multiaddrs, each with its /p2p/ID.
PeerAddrList = Annotated[MultiaddrList, AfterValidator(_peer_addrs)]


def _expand_user(path: Path) -> Path:
    if "\0" in str(path):
        raise ValueError("contains a NUL character")
    try:
        return path.expanduser()
    except RuntimeError as exc:  # no HOME, and a user the password database does not know
        raise ValueError(f"{path}: {exc} (set HOME, or give a path without ~)") from None


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty (an unset variable?): give a path, or leave the setting out for its default")
    return value


# A path where `~` means the user's home; an empty string is refused (it would be the working directory).
UserPath = Annotated[Path, BeforeValidator(_not_blank), AfterValidator(_expand_user)]

# Seconds a setting may say at most (~31 years): a deadline or cut-off in ns past it no longer fits SQLite's or the
# wire's int64, and stopped a node with "Python int too large to convert to SQLite INTEGER", naming no setting.
SECONDS_MAX = 10**9
Seconds = Annotated[float, Field(le=SECONDS_MAX)]


KEY_FILE_MAX_BYTES = 4096  # a key file holds 64 hex characters; more is no key file (and /dev/zero ends here)
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def read_secret_key_file(path: Path) -> str:
    """The secret key (64 hex characters, optional 0x, surrounding whitespace ignored) a key file holds, as
    `<data_dir>/identity.key` holds it. ValueError naming the file, never its content, when it cannot be read or
    holds no key."""
    try:
        data = _read_at_most(path, KEY_FILE_MAX_BYTES + 1, KEY_FILE_WAIT_S)
    except TimeoutError:
        raise ValueError(
            f"cannot read key file {path}: nothing came within {KEY_FILE_WAIT_S:g} s (a pipe nobody writes?)"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ValueError(
            f"cannot read key file {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None
    text = data.decode("ascii", errors="replace").strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    digits = "0123456789abcdefABCDEF"
    if len(data) > KEY_FILE_MAX_BYTES or len(text) != 64 or any(c not in digits for c in text):
        raise ValueError(
            f"key file {path} holds no secret key (expected 64 hex characters, with or without 0x); "
            "its content is not shown"
        )
    if not 0 < int(text, 16) < _SECP256K1_ORDER:
        raise ValueError(f"key file {path} holds no valid secp256k1 secret key; its content is not shown")
    return text


KEY_FILE_WAIT_S = 10.0  # a pipe (`<(pass show key)`) gets this long to write the key; a FIFO nobody writes fails


def _read_at_most(path: Path, limit: int, wait_s: float) -> bytes:
    """At most `limit` bytes of the file, read once (a pipe can be read only once); TimeoutError when a pipe or
    device gives no end within `wait_s` (open() of a FIFO without a writer, or a tty, would block for ever)."""
    import select
    import stat
    import time

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return os.pread(fd, limit, 0) if limit else b""
        deadline, data = time.monotonic() + wait_s, bytearray()
        while len(data) < limit:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            try:
                piece = os.read(fd, limit - len(data))
            except BlockingIOError:
                continue
            if not piece:
                break  # the writer closed: the end (a FIFO opened before any writer reads as empty: no key)
            data.extend(piece)
        return bytes(data)
    finally:
        os.close(fd)


def _not_given(values: dict[str, Any], higher: tuple[PydanticBaseSettingsSource, ...]) -> dict[str, Any]:
    """`values` without the settings a higher layer gives: a dict setting (registry, tool_secrets) given in the
    environment or a flag replaces the file's, as every other setting does (pydantic-settings merges dicts)."""
    given = {name for source in higher for name in source()}
    return {name: value for name, value in values.items() if name not in given}


class _EnvBelow(PydanticBaseSettingsSource):
    """The environment without the settings a flag gives (`_not_given`)."""

    def __init__(
        self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource, flags: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._env, self._flags = env, flags

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _not_given(self._env(), (self._flags,))


class _TomlBelow(TomlConfigSettingsSource):
    """The TOML file without the settings the environment or a flag gives (`_not_given`)."""

    def __init__(self, settings_cls: type[BaseSettings], higher: tuple[PydanticBaseSettingsSource, ...]) -> None:
        super().__init__(settings_cls)
        self._higher = higher

    def __call__(self) -> dict[str, Any]:
        return _not_given(super().__call__(), self._higher)


class LayeredSettings(BaseSettings):
    """Base of the node's and the gateway's settings."""

    # Repeatable flags read better in the singular: --model A --model B.
    singular_flags: ClassVar[dict[str, str]] = {}
    # Settings whose empty default means "worked out at start" rather than "none".
    auto_defaults: ClassVar[frozenset[str]] = frozenset()
    label: ClassVar[str] = "settings"
    # Variables under the env prefix that are not settings of this class (another command's, the installer's).
    foreign_env: ClassVar[tuple[str, ...]] = ()
    # Settings that hold a secret (a flag shows it in `ps`), each with the setting naming a file that holds it, if any.
    secret_settings: ClassVar[dict[str, str | None]] = {}

    def _secret_key_from_file(self) -> None:
        """`secret_key` read from `secret_key_file` when that is set (ValueError naming the file otherwise)."""
        path = getattr(self, "secret_key_file", None)
        if path is None:
            return
        if getattr(self, "secret_key", None):
            raise ValueError("secret_key and secret_key_file are both set: give one")
        try:
            setattr(self, "secret_key", read_secret_key_file(path))  # noqa: B010 - a field of the subclasses only
        except ValueError as exc:
            raise ValueError(f"secret_key_file: {exc}") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The settings' sources, in order of precedence."""
        # First wins: CLI flags (init) > environment > TOML file > defaults; a higher layer replaces a setting whole.
        return (
            init_settings,
            _EnvBelow(settings_cls, env_settings, init_settings),
            _TomlBelow(settings_cls, (init_settings, env_settings)),
        )

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line flag of a setting: `max_queue` -> `--max-queue`."""
        return "--" + cls.singular_flags.get(name, name).replace("_", "-")

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of a setting: `max_queue` -> `<PREFIX>MAX_QUEUE`."""
        return f"{cls.model_config.get('env_prefix', '')}{name.upper()}"

    @classmethod
    def load(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
        """Build the settings; `overrides` are CLI flags (None values are ignored).

        Raises ConfigError naming the setting (and where it can be set) when a value is invalid.
        """
        overrides = {key: value for key, value in overrides.items() if value is not None}
        toml_file = None
        if config_file is not None:
            config_file = Path(config_file).expanduser()
            if config_file.is_dir():
                raise ConfigError(f"config file {config_file} is a directory")
            if not config_file.is_file():
                raise ConfigError(f"config file not found: {config_file}")
            toml_file = config_file
        with_file: type[S] = type(
            f"File{cls.__name__}", (cls,), {"model_config": {**cls.model_config, "toml_file": toml_file}}
        )
        try:
            return with_file(**overrides)
        except ValidationError as exc:
            raise ConfigError(cls._describe(exc, overrides, toml_file)) from None
        except (SettingsError, ValueError, OSError) as exc:  # unreadable TOML, undecodable env value
            source = f"config file {toml_file}" if toml_file else cls.label
            raise ConfigError(f"cannot read {source}: {exc}{_byte_order_mark_hint(toml_file)}") from None

    @classmethod
    def unknown_env(cls, environ: dict[str, str] | None = None) -> list[str]:
        """A line for each variable under the env prefix that names no setting, or outside it but one typo from a
        setting's (COMPUTE_NODE_GATWAY_PORT for the gateway): a typo is otherwise ignored."""
        prefix = cls.model_config.get("env_prefix", "").upper()
        names = [cls.env_var(name).upper() for name in cls.model_fields]
        foreign = tuple(f.upper() for f in cls.foreign_env)
        lines = []
        for variable in sorted(os.environ if environ is None else environ):
            # Matched as pydantic-settings reads them: case-insensitively (compute_node_n_ctx sets n_ctx).
            upper = variable.upper()
            if upper in names or upper.startswith(foreign):
                continue
            if upper.startswith(prefix):
                close = difflib.get_close_matches(upper, names, n=1)
            elif upper.startswith(prefix[:8]):  # "COMPUTE_": another daemon's variable, or a typo in the prefix
                close = difflib.get_close_matches(upper, names, n=1, cutoff=0.9)
                if not close:
                    continue
            else:
                continue
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"{variable} is not a setting and is ignored{hint}")
        return lines

    @classmethod
    def _where(cls, name: str, overrides: dict[str, Any], toml_file: Path | None) -> str:
        """Where the value of setting `name` came from, as the precedence picked it (the highest layer that has it)."""
        variable = cls.env_var(name)
        if name in overrides:
            return f"on the command line ({cls.flag(name)})"
        if any(key.upper() == variable.upper() for key in os.environ):  # pydantic-settings reads names in any case
            return f"in the environment ({variable})"
        if toml_file is not None:
            return f"in the config file {toml_file} (also {variable} / {cls.flag(name)})"
        return f"({variable} / {cls.flag(name)})"

    @classmethod
    def _describe(
        cls, exc: ValidationError, overrides: dict[str, Any] | None = None, toml_file: Path | None = None
    ) -> str:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if not error["loc"]:  # a check across settings; its message names them
                problems.append(f"invalid {cls.label}: {message}")
                continue
            name = str(error["loc"][0])
            if name not in cls.model_fields:  # a key of the config file that names no setting
                close = difflib.get_close_matches(name, list(cls.model_fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"unknown setting '{name}' in the config file{hint}")
                continue
            problems.append(f"invalid setting '{name}' {cls._where(name, overrides or {}, toml_file)}: {message}")
        return "; ".join(problems)

    @classmethod
    def table(cls) -> str:
        """The Markdown rows of every setting (key, flag, variable, default, meaning) for the README."""
        rows = []
        for name, field in cls.model_fields.items():
            default = field.default
            if isinstance(default, list):
                shown = ", ".join(default) if default else "(none)"
            elif default is None or isinstance(default, dict):
                shown = "(auto)" if name in cls.auto_defaults else "(none)"
            else:
                shown = str(default)
            rows.append(f"| `{name}` | `{cls.flag(name)}` | `{cls.env_var(name)}` | `{shown}` | {field.description} |")
        return "\n".join(rows)


def _byte_order_mark_hint(toml_file: Path | None) -> str:
    """A hint when the file starts with a UTF-8 byte-order mark, which TOML does not allow (some editors write one)."""
    if toml_file is None:
        return ""
    try:
        with open(toml_file, "rb") as file:
            starts = file.read(3)
    except OSError:
        return ""
    if starts != b"\xef\xbb\xbf":
        return ""
    return " (the file starts with a UTF-8 byte-order mark, which TOML does not allow: save it without one)"
