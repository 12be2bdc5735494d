"""A Python-side parse of GBNF, following llama.cpp's grammar parser, run before llama.cpp sees a grammar.

llama.cpp's native parser aborts the process on some malformed grammars, so no
grammar string reaches `llama_sampler_init_grammar` or `LlamaGrammar.from_string`
without passing `check_gbnf` first. Beyond the syntax it checks what makes
llama.cpp refuse a grammar later: an undefined rule, a missing root, left
recursion, and it bounds the size (repetitions expand into copies of rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.requests import ModelError

MAX_GBNF_CHARS = 1_000_000
MAX_REPEAT = 10_000  # the largest {m,n} bound accepted
_NAME = re.compile(r"[A-Za-z0-9-]+")
_SIMPLE_ESCAPES = {"t", "r", "n", "\\", '"', "[", "]"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class GrammarError(ModelError):
    """A schema, regex or grammar cannot be turned into a llama.cpp grammar; the message says why."""


@dataclass
class _Rules:
    """What the parse found: rule -> its alternatives' leading references, and whether it can be empty."""

    defined: dict[str, int] = field(default_factory=dict)  # name -> position of its definition
    used: dict[str, int] = field(default_factory=dict)  # name -> position of a first use
    # For left recursion: rule -> list of alternatives, each a list of (ref or None for a terminal, nullable?)
    alternatives: dict[str, list[list[tuple[str | None, bool]]]] = field(default_factory=dict)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.rules = _Rules()
        self._last_min = 1  # the lower bound of the last quantifier read (0: the item may be absent)

    def fail(self, message: str) -> GrammarError:
        line = self.text.count("\n", 0, self.pos) + 1
        return GrammarError(f"grammar does not parse: {message} (line {line}, offset {self.pos})")

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def space(self, newline_ok: bool) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t" or (newline_ok and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                while self.pos < len(self.text) and self.text[self.pos] not in "\r\n":
                    self.pos += 1
            else:
                return

    def name(self) -> str:
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self.fail("expecting a name")
        self.pos = match.end()
        return match.group()

    def int_(self) -> int:
        match = re.compile(r"[0-9]+").match(self.text, self.pos)
        if match is None:
            raise self.fail("expecting an integer")
        self.pos = match.end()
        value = int(match.group())
        if value > MAX_REPEAT:
            raise self.fail(f"repetition bound {value} exceeds {MAX_REPEAT}")
        return value

    def char(self) -> None:
        """One (possibly escaped) character of a literal or class."""
        c = self.peek()
        if not c:
            raise self.fail("unexpected end of input")
        if c != "\\":
            self.pos += 1
            return
        kind = self.peek(1)
        if kind in _HEX_ESCAPES:
            digits = self.text[self.pos + 2 : self.pos + 2 + _HEX_ESCAPES[kind]]
            if len(digits) != _HEX_ESCAPES[kind] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"expecting {_HEX_ESCAPES[kind]} hex digits after \\{kind}")
            self.pos += 2 + len(digits)
        elif kind in _SIMPLE_ESCAPES:
            self.pos += 2
        else:
            raise self.fail(f"unknown escape \\{kind}" if kind else "unexpected end of input")

    def grammar(self) -> None:
        self.space(True)
        while self.pos < len(self.text):
            self.rule()
        if "root" not in self.rules.defined:
            raise GrammarError("grammar does not parse: no 'root' rule")
        for name, at in self.rules.used.items():
            if name not in self.rules.defined:
                self.pos = at
                raise self.fail(f"undefined rule {name!r}")

    def rule(self) -> None:
        start = self.pos
        name = self.name()
        self.space(False)
        if not self.text.startswith("::=", self.pos):
            raise self.fail("expecting ::=")
        self.pos += 3
        self.space(True)
        if name in self.rules.defined:
            self.pos = start
            raise self.fail(f"rule {name!r} is defined twice")
        self.rules.defined[name] = start
        self.rules.alternatives[name] = self.alternates(nested=False)
        if self.peek() == "\r":
            self.pos += 1
        if self.peek() == "\n":
            self.pos += 1
        elif self.peek():
            raise self.fail("expecting newline or end")
        self.space(True)

    def alternates(self, nested: bool) -> list[list[tuple[str | None, bool]]]:
        found = [self.sequence(nested)]
        while self.peek() == "|":
            self.pos += 1
            self.space(True)
            found.append(self.sequence(nested))
        return found

    def sequence(self, nested: bool) -> list[tuple[str | None, bool]]:
        items: list[tuple[str | None, bool]] = []
        while True:
            c = self.peek()
            if c == '"':
                self.pos += 1
                empty = True
                while self.peek() != '"':
                    self.char()
                    empty = False
                self.pos += 1
                items.append((None, empty))
            elif c == "[":
                self.pos += 1
                if self.peek() == "^":
                    self.pos += 1
                while self.peek() != "]":
                    self.char()
                    if self.peek() == "-" and self.peek(1) not in ("]", ""):
                        self.pos += 1
                        self.char()
                self.pos += 1
                items.append((None, False))
            elif c and _NAME.match(c):
                at = self.pos
                ref = self.name()
                self.rules.used.setdefault(ref, at)
                items.append((ref, False))
            elif c == "(":
                self.pos += 1
                self.space(True)
                inner = self.alternates(nested=True)
                if self.peek() != ")":
                    raise self.fail("expecting ')'")
                self.pos += 1
                # A group behaves like an anonymous rule: keep its alternatives for the recursion check.
                group = f"({len(self.rules.alternatives)}@{self.pos}"
                self.rules.alternatives[group] = inner
                items.append((group, False))
            elif c == ".":
                self.pos += 1
                items.append((None, False))
            elif c in ("*", "+", "?", "{"):
                if not items:
                    raise self.fail(f"expecting an item before {c!r}")
                self.quantifier(nested)
                last, was_empty = items[-1]
                items[-1] = (last, was_empty or c in ("*", "?") or (c == "{" and self._last_min == 0))
                continue
            else:
                return items
            self.space(nested)

    def quantifier(self, nested: bool) -> None:
        c = self.peek()
        self.pos += 1
        self._last_min = 1
        if c != "{":
            self.space(nested)
            return
        self.space(nested)
        low = self.int_()
        self._last_min = low
        self.space(nested)
        if self.peek() == "}":
            self.pos += 1
        elif self.peek() == ",":
            self.pos += 1
            self.space(nested)
            if self.peek().isdigit():
                high = self.int_()
                if high < low:
                    raise self.fail(f"repetition {{{low},{high}}} has max < min")
                self.space(nested)
            if self.peek() != "}":
                raise self.fail("expecting '}'")
            self.pos += 1
        else:
            raise self.fail("expecting ',' or '}'")
        self.space(nested)


def _nullable(rules: _Rules) -> set[str]:
    """Rules (and groups) that can match the empty string."""
    empty: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, alternatives in rules.alternatives.items():
            if name in empty:
                continue
            if any(all(n or (r is not None and r in empty) for r, n in alt) for alt in alternatives):
                empty.add(name)
                changed = True
    return empty


def _check_left_recursion(rules: _Rules) -> None:
    """llama.cpp refuses a rule that can reach itself without consuming input."""
    empty = _nullable(rules)
    leading: dict[str, set[str]] = {}
    for name, alternatives in rules.alternatives.items():
        refs: set[str] = set()
        for alt in alternatives:
            for ref, nullable in alt:
                if ref is not None:
                    refs.add(ref)
                if not (nullable or (ref is not None and ref in empty)):
                    break
        leading[name] = refs
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str) -> None:
        state[name] = 1
        for ref in leading.get(name, ()):
            if state.get(ref) == 1:
                shown = ref if not ref.startswith("(") else "a group"
                raise GrammarError(f"grammar does not parse: left recursion through {shown}")
            if ref not in state:
                visit(ref)
        state[name] = 2

    for name in rules.alternatives:
        if name not in state:
            visit(name)


def check_gbnf(text: str) -> str:
    """`text` if llama.cpp can parse it as a grammar with a `root` rule; GrammarError naming the problem."""
    if len(text) > MAX_GBNF_CHARS:
        raise GrammarError(f"grammar is {len(text)} characters, over the limit of {MAX_GBNF_CHARS}")
    parser = _Parser(text)
    try:
        parser.grammar()
    except RecursionError:
        raise GrammarError("grammar does not parse: nests too deeply") from None
    _check_left_recursion(parser.rules)
    return text
