"""Filling `{{name}}` and `{name}` placeholders for declared input names only."""

from __future__ import annotations

import re

from workflows.errors import LimitExceededError


def fill(template: str, values: dict[str, str], limit: int | None = None) -> str:
    """Replace `{{name}}` and `{name}` for every name in `values`.

    One pass over the template: other braces (JSON in a prompt) stay as they
    are, and text substituted in is never scanned again. With `limit`, a text
    that would grow past `limit` characters raises LimitExceededError before it
    is built (a template repeating a large value many times).
    """
    if not values:
        return template
    names = "|".join(re.escape(n) for n in sorted(values, key=len, reverse=True))
    pattern = re.compile(r"\{\{(" + names + r")\}\}|\{(" + names + r")\}")
    if limit is not None:
        grown = len(template) + sum(len(values[m.group(1) or m.group(2)]) for m in pattern.finditer(template))
        if grown > limit:
            raise LimitExceededError(
                "memory", f"memory limit exceeded: filled-in messages would exceed {limit} characters"
            )
    return pattern.sub(lambda m: values[m.group(1) or m.group(2)], template)
