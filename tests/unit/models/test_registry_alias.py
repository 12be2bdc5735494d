"""Registry aliases: one GGUF hosted under a second name (e.g. a name Dria's SDK knows)."""

from __future__ import annotations

import re

import pytest

from config.settings import DEFAULT_MODEL
from models.registry import Registry, RegistryError


def test_an_alias_hosts_the_same_file_under_another_name() -> None:
    registry = Registry.builtin().with_overrides({"llama3.2:1b": {"alias": "llama3.2:1b-instruct-q4_K_M"}})
    alias, target = registry.get("llama3.2:1b"), registry.get("llama3.2:1b-instruct-q4_K_M")
    assert alias.name == "llama3.2:1b"
    assert alias.model_dump(exclude={"name"}) == target.model_dump(exclude={"name"})


def test_an_alias_may_name_an_entry_added_before_it() -> None:
    registry = Registry.builtin().with_overrides(
        {
            "mine": {"path": "/models/mine.gguf"},
            "gpt-4o-mini": {"alias": "mine"},
        }
    )
    assert str(registry.get("gpt-4o-mini").path) == "/models/mine.gguf"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"alias": "no-such-model"}, "alias 'no-such-model' is not a known model"),
        ({"alias": DEFAULT_MODEL, "file": "x.gguf"}, "an alias takes no other fields (got file)"),
        ({"alias": 3}, "alias 3 is not a known model"),
    ],
)
def test_bad_aliases_are_named(entry: dict[str, object], reason: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(reason)):
        Registry.builtin().with_overrides({"llama3.2:1b": entry})
