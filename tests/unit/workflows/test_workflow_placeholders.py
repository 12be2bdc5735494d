"""Placeholders in prompts: declared names only, substituted once."""

from __future__ import annotations

import random
import re

import pytest

from workflows.placeholders import fill

PLACEHOLDERS = [
    ("Hi {{name}}!", "Hi Ada!"),
    ("Hi {name}!", "Hi Ada!"),
    ("{{name}} and {{name}}", "Ada and Ada"),
    ('JSON {"name": 1} and {other}', 'JSON {"name": 1} and {other}'),
    ("{{other}} {name}", "{{other}} Ada"),
    ("{{list}}", "a \nb"),
    ("{{tricky}}", "{name}"),  # substituted text is not scanned again
]


@pytest.mark.parametrize(("template", "expected"), PLACEHOLDERS)
def test_placeholders_fill_declared_names_only(template: str, expected: str) -> None:
    assert fill(template, {"name": "Ada", "list": "a \nb", "tricky": "{name}"}) == expected


def _fill_by_alternation(template: str, values: dict[str, str]) -> str:
    """The rule as first written: one alternation of every name, longest first (slow with many names)."""
    names = "|".join(re.escape(n) for n in sorted(values, key=len, reverse=True))
    pattern = re.compile(r"\{\{(" + names + r")\}\}|\{(" + names + r")\}")
    return pattern.sub(lambda m: values[m.group(1) or m.group(2)], template)


def test_fill_agrees_with_the_alternation_of_every_name() -> None:
    rng = random.Random(7)
    alphabet = ["{", "}", "a", "b", "ab", " ", "x"]
    for _ in range(3000):
        names = rng.sample(["a", "b", "ab", "ba", "x y"], rng.randint(1, 4))
        values = {name: f"<{name}>" for name in names}
        template = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        assert fill(template, values) == _fill_by_alternation(template, values), (template, names)
