"""Command-line flags generated from a settings class: one flag per setting, validated by the model."""

from __future__ import annotations

import argparse
import json
import math
import sys
import typing
from pathlib import Path
from typing import TypeVar

from config.layered import LayeredSettings

S = TypeVar("S", bound=LayeredSettings)

EXIT_ERROR = 1  # every command's exit status when it failed (run-task's 2 is "no node now, try again")


def flag_number(text: str) -> float:
    """A flag's text as a number; NaN when it is none, which every range check refuses with its own message (a
    ValueError from an argparse type makes argparse say "invalid _seconds value")."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def add_settings_flags(
    parser: argparse.ArgumentParser, settings_cls: type[LayeredSettings], dest_prefix: str = ""
) -> None:
    """`--config` plus one flag per setting; `dest_prefix` keeps two settings classes apart in one namespace."""
    parser.add_argument("--config", type=Path, help="TOML config file")
    for name, field in settings_cls.model_fields.items():
        flag, dest, help_text = settings_cls.flag(name), dest_prefix + name, field.description
        origin = typing.get_origin(field.annotation)
        args = typing.get_args(field.annotation)
        if field.annotation is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is list or (args and typing.get_origin(args[0]) is list):
            parser.add_argument(flag, dest=dest, action="append", default=None, help=f"{help_text} (repeatable)")
        elif origin is dict:
            parser.add_argument(flag, dest=dest, type=json.loads, default=None, help=f"{help_text} (JSON)")
        else:
            parser.add_argument(flag, dest=dest, default=None, help=help_text)


def settings_from(args: argparse.Namespace, settings_cls: type[S], dest_prefix: str = "") -> S:
    """The settings: defaults < TOML (`--config`) < environment < the flags given. ConfigError if invalid."""
    overrides = {name: getattr(args, dest_prefix + name, None) for name in settings_cls.model_fields}
    for name, file_setting in settings_cls.secret_settings.items():
        if overrides.get(name) is not None:
            print(f"compute-node: warning: {secret_flag_warning(settings_cls, name, file_setting)}", file=sys.stderr)
    if _holds_api_key(overrides.get("registry")):  # any local process reads a command line: the execution ones too
        print(
            "compute-node: warning: --registry holds an api_key, which shows in `ps` to every local user; give "
            "the key with the entry's api_key_env, or the registry in the config file, instead",
            file=sys.stderr,
        )
    settings = settings_cls.load(args.config, **overrides)
    for line in settings_cls.unknown_env():
        print(f"compute-node: warning: {line}", file=sys.stderr)
    return settings


def _holds_api_key(registry: object) -> bool:
    """Whether a `--registry` value gives any entry its `api_key`."""
    return isinstance(registry, dict) and any(isinstance(e, dict) and e.get("api_key") for e in registry.values())


def secret_flag_warning(settings_cls: type[LayeredSettings], name: str, file_setting: str | None) -> str:
    """One line: the secret flag of setting `name` shows in `ps`, and where else it can be given."""
    file_flag = f"{settings_cls.flag(file_setting)} FILE, " if file_setting else ""
    return (
        f"{settings_cls.flag(name)} shows its value in `ps` to every local user; give it with "
        f"{file_flag}{settings_cls.env_var(name)} or the config file instead"
    )
