"""`inert`: another party's text printed to a terminal cannot act on it, and stays readable."""

from __future__ import annotations

import pytest

from node.ops.inert_text import inert


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # a window title (OSC), ended by BEL
        ("ok\x1b[2K\rforged line", "ok\\x1b[2K\\rforged line"),  # erase the line, write another over it
        ("\x1b[31mred", "\\x1b[31mred"),  # colour (CSI)
        ("\x9b31m", "\\x9b31m"),  # C1 CSI, one byte
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("one\u2028two\u2029three\x0bfour", "one\\u2028two\\u2029three\\x0bfour"),
        ("lone \ud800", "lone \\ud800"),
    ],
)
def test_what_a_terminal_acts_on_is_escaped(text: str, shown: str) -> None:
    assert inert(text) == shown


def test_printable_text_is_left_as_it_is() -> None:
    for text in ("The answer is 42.", "héllo, 世界, ∑ 😀", "a\u00a0b", ""):
        assert inert(text) == text


def test_kept_characters_stay() -> None:
    assert inert("line one\nline\ttwo\r\x1b", keep="\n\t") == "line one\nline\ttwo\\r\\x1b"
