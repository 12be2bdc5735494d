"""Filling `{{name}}` and `{name}` placeholders for declared input names only."""

from __future__ import annotations

import re


def fill(template: str, values: dict[str, str]) -> str:
    """Replace `{{name}}` and `{name}` for every name in `values`.

    One pass over the template: other braces (JSON in a prompt) stay as they
    are, and text substituted in is never scanned again.
    """
    if not values:
        return template
    names = "|".join(re.escape(n) for n in sorted(values, key=len, reverse=True))
    pattern = re.compile(r"\{\{(" + names + r")\}\}|\{(" + names + r")\}")
    return pattern.sub(lambda m: values[m.group(1) or m.group(2)], template)
