"""Text from other parties made inert for a terminal.

A node chooses its error texts, its results and the model names it reports; printed raw, a control
character (ESC, BEL, CR, VT, C1), a bidi or other format character, or a line or paragraph separator
could retitle, clear or rewrite the operator's terminal, or forge a log line. `inert` writes each such
character as its Python escape (`\\x1b`, `\\u202e`) and leaves the rest as it is.
"""

from __future__ import annotations

import unicodedata

# Controls, format characters (bidi among them), line and paragraph separators, lone surrogates.
_ACTIVE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def inert(text: str, keep: str = "") -> str:
    """`text` with every character a terminal would act on escaped, except those in `keep` (e.g. "\\n\\t")."""
    if text.isprintable():
        return text  # the common case, in one pass of C: no character of those categories
    return "".join(
        c.encode("unicode_escape", "backslashreplace").decode("ascii")
        if c not in keep and unicodedata.category(c) in _ACTIVE_CATEGORIES
        else c
        for c in text
    )
