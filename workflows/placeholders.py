"""Filling `{{name}}` and `{name}` placeholders for declared input names only."""

from __future__ import annotations

import re

from workflows.errors import LimitExceededError


def fill(template: str, values: dict[str, str], limit: int | None = None) -> str:
    """Replace `{{name}}` and `{name}` for every name in `values` (see `fill_all`)."""
    return fill_all([template], values, limit)[0]


def fill_all(templates: list[str], values: dict[str, str], limit: int | None = None) -> list[str]:
    """Fill every template of one step, e.g. its messages.

    One pass over each template: other braces (JSON in a prompt) stay as they
    are, and text substituted in is never scanned again. With `limit`, texts
    that would together grow past `limit` characters raise LimitExceededError
    before any is built: a template repeating a large value, or thousands of
    messages each naming it once, would multiply it.
    """
    if not values:
        return list(templates)
    names = "|".join(re.escape(n) for n in sorted(values, key=len, reverse=True))
    pattern = re.compile(r"\{\{(" + names + r")\}\}|\{(" + names + r")\}")
    if limit is not None:
        grown = 0
        for template in templates:
            grown += len(template) + sum(len(values[m.group(1) or m.group(2)]) for m in pattern.finditer(template))
            if grown > limit:
                raise LimitExceededError(
                    "memory", f"memory limit exceeded: filled-in messages would exceed {limit} characters"
                )
    return [pattern.sub(lambda m: values[m.group(1) or m.group(2)], template) for template in templates]
