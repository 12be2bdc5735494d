"""Placeholders in prompts: declared names only, substituted once."""

from __future__ import annotations

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
