"""Filling `{{name}}` and `{name}` placeholders for declared input names only."""

from __future__ import annotations

import re

from workflows.errors import LimitExceededError

# Any brace-free text in braces, its name looked up after: linear in the template whatever the number of names
# (an alternation of every input name tried each name at each brace: 0.38 s a step with 1,500 names).
_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}|\{([^{}]*)\}")


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

    def value_of(match: re.Match[str]) -> str | None:
        return values.get(match.group(1) if match.group(1) is not None else match.group(2))

    if limit is not None:
        grown = 0
        for template in templates:
            grown += len(template) + sum(
                len(v) for m in _PLACEHOLDER.finditer(template) if (v := value_of(m)) is not None
            )
            if grown > limit:
                raise LimitExceededError(
                    "memory", f"memory limit exceeded: filled-in messages would exceed {limit} characters"
                )

    def filled(match: re.Match[str]) -> str:
        value = value_of(match)
        return match.group(0) if value is None else value  # braces around no input's name stay as they are

    return [_PLACEHOLDER.sub(filled, template) for template in templates]
