"""Python regular expression -> the regex syntax llguidance reads, for decoding constrained to a regex.

Dria's SDK sends outlines-core regexes written for Python's `re`; llguidance reads
Rust `regex` syntax, which differs in places (`\\d` is Unicode there, `{,n}` does
not parse). This parser reads the Python form and writes an unambiguous Rust form
(every non-alphanumeric character as `\\x{..}`), so a pattern means what `re` says.

Supported: literals and escapes (`\\.`, `\\xHH`, `\\uHHHH`, `\\n`...), `.`, classes
(`[^"\\\\\\x00-\\x1F]`, `\\d \\w \\s` and their negations outside classes), groups
(`(...)`, `(?:...)`, `(?P<name>...)`), alternation, and the quantifiers `? * + {m}
{m,} {m,n} {,n}` (lazy forms match the same strings). The pattern is matched as
a whole (`^` and `$` at its ends are accepted and ignored). Anything else —
lookaround, backreferences, inline flags, word boundaries — is a GrammarError
naming it; a pattern never reaches llguidance unconverted.
"""

from __future__ import annotations

import re

from models.grammar.errors import GrammarError

MAX_PATTERN_CHARS = 100_000
MAX_REPEAT = 10_000  # the largest {m,n} bound accepted
MAX_EXPANSION = 100_000  # elements a pattern may expand to once counted repetitions are unrolled
MAX_NESTING = 100  # groups inside groups (Rust's regex parser stops at 250)
_SHORTHANDS = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \t\n\r\f\v"}
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
_REJECTED_ESCAPES = {"b": "word boundaries", "B": "word boundaries", "A": "anchors", "Z": "anchors", "z": "anchors"}


def _code(c: str) -> str:
    return f"\\x{{{ord(c):X}}}"


def _literal(text: str) -> str:
    """Rust regex matching `text` exactly."""
    return "".join(c if c.isascii() and c.isalnum() else _code(c) for c in text)


_class_char = _literal


class _RegexParser:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pos = 0
        self.depth = 0

    def fail(self, message: str) -> GrammarError:
        return GrammarError(f"regex: {message} at position {self.pos}")

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.pattern[i] if i < len(self.pattern) else ""

    def take(self) -> str:
        c = self.peek()
        if not c:
            raise self.fail("unexpected end of pattern")
        self.pos += 1
        return c

    def parse(self) -> str:
        if self.peek() == "^":
            self.pos += 1
        expr, cost = self.alternation()
        if cost > MAX_EXPANSION:
            raise GrammarError(
                f"regex: expands to about {cost} grammar elements once counts are unrolled (limit {MAX_EXPANSION})"
            )
        if self.peek() == "$" and self.pos == len(self.pattern) - 1:
            self.pos += 1
        if self.pos != len(self.pattern):
            c = self.peek()
            raise self.fail("unbalanced ')'" if c == ")" else f"unsupported {c!r}")
        return expr

    def alternation(self) -> tuple[str, int]:
        """The regex of alternatives, and how many elements it expands into once counts are unrolled."""
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        cost = sum(c for _, c in branches)
        if len(branches) == 1:
            return branches[0][0], cost
        return "(?:" + "|".join(b for b, _ in branches) + ")", cost

    def sequence(self) -> tuple[str, int]:
        parts: list[str] = []
        cost = 0
        text = ""  # consecutive unquantified literal characters, merged into one literal
        while self.peek() and self.peek() not in "|)":
            if self.peek() == "$" and self.pos == len(self.pattern) - 1:
                break
            item, char, item_cost = self.atom()
            quantifier, factor = self.quantifier()
            cost += item_cost * factor
            if cost > MAX_EXPANSION:
                raise self.fail(f"expands to more than {MAX_EXPANSION} grammar elements once counts are unrolled")
            if char is not None and not quantifier:
                text += char
                continue
            if text:
                parts.append(_literal(text))
                text = ""
            parts.append(item + quantifier)
        if text:
            parts.append(_literal(text))
        return "".join(parts), cost

    def quantifier(self) -> tuple[str, int]:
        """The quantifier, and how many copies of its item it makes once unrolled."""
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            found, factor = c, 1
        elif c == "{" and self._counted():
            found = self._counted_quantifier()
            bounds = [int(n) for n in re.findall(r"\d+", found)]
            factor = max(bounds + [1])
        else:
            return "", 1
        if self.peek() == "?":  # lazy: the same strings match as a whole
            self.pos += 1
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._counted()):
            raise self.fail("multiple repeat (possessive or stacked quantifiers are not supported)")
        return found, factor

    def _counted(self) -> bool:
        end = self.pattern.find("}", self.pos)
        if end < 0:
            return False
        body = self.pattern[self.pos + 1 : end]
        low, _, high = body.partition(",")
        return bool(body) and (low.isdigit() or (low == "" and "," in body)) and (high == "" or high.isdigit())

    def _counted_quantifier(self) -> str:
        end = self.pattern.index("}", self.pos)
        body = self.pattern[self.pos + 1 : end]
        self.pos = end + 1
        low_text, comma, high_text = body.partition(",")
        low = int(low_text) if low_text else 0
        high = int(high_text) if high_text else None
        if max(low, high or 0) > MAX_REPEAT:
            raise self.fail(f"repetition bound over {MAX_REPEAT}")
        if high is not None and high < low:
            raise self.fail(f"repetition {{{body}}} has max < min")
        if not comma:
            return f"{{{low}}}"
        return f"{{{low},}}" if high is None else f"{{{low},{high}}}"

    def atom(self) -> tuple[str, str | None, int]:
        """One regex element, the literal character it stands for (None if not a single char), its expanded size."""
        c = self.take()
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class(), None, 1
        if c == ".":
            return "[^\\x{A}]", None, 1
        if c == "\\":
            return (*self.escape(), 1)
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c in "^$":
            raise self.fail(f"anchor {c!r} inside the pattern is not supported")
        if c == ")":
            raise self.fail("unbalanced ')'")
        return _literal(c), c, 1

    def group(self) -> tuple[str, None, int]:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"groups nest more than {MAX_NESTING} deep")
        if self.peek() == "?":
            if self.peek(1) == ":":
                self.pos += 2
            elif self.peek(1) == "P" and self.peek(2) == "<":
                end = self.pattern.find(">", self.pos)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.pos = end + 1
            else:
                raise self.fail("lookaround, inline flags and other (?...) groups are not supported")
        inner, cost = self.alternation()
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        self.depth -= 1
        return "(?:" + inner + ")", None, max(cost, 1)

    def escape(self) -> tuple[str, str | None]:
        c = self.take()
        if c in _SHORTHANDS:
            return "[" + "".join(_class_char(x) if x not in "-" else x for x in _SHORTHANDS[c]) + "]", None
        if c.lower() in _SHORTHANDS:
            return "[^" + "".join(_class_char(x) if x not in "-" else x for x in _SHORTHANDS[c.lower()]) + "]", None
        char = self._escaped_char(c)
        return _literal(char), char

    def _escaped_char(self, c: str) -> str:
        """The character an escape (after the backslash) stands for."""
        if c in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.pattern[self.pos : self.pos + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {width} hex digits")
            self.pos += width
            value = int(digits, 16)
            if value > 0x10FFFF:
                raise self.fail("code point out of range")
            return chr(value)
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c in _REJECTED_ESCAPES:
            raise self.fail(f"\\{c} ({_REJECTED_ESCAPES[c]}) is not supported")
        if c.isdigit():
            raise self.fail("backreferences are not supported")
        if c.isascii() and c.isalnum():
            raise self.fail(f"unknown escape \\{c}")
        return c

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        items: list[str] = []
        first = True
        while True:
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\" and self.peek() in _SHORTHANDS:
                items.append("".join(_class_char(x) if x != "-" else "-" for x in _SHORTHANDS[self.take()]))
                continue
            if c == "\\" and self.peek().lower() in _SHORTHANDS:
                raise self.fail("a negated shorthand (\\D, \\W, \\S) inside a class is not supported")
            start = self._escaped_char(self.take()) if c == "\\" else c
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                d = self.take()
                end = self._escaped_char(self.take()) if d == "\\" else d
                if ord(end) < ord(start):
                    raise self.fail("bad character range")
                items.append(f"{_class_char(start)}-{_class_char(end)}")
            else:
                items.append(_class_char(start))
        return "[" + ("^" if negated else "") + "".join(items) + "]"


def translate_regex(pattern: str) -> str:
    """`pattern` (Python `re` syntax, matched as a whole) in the Rust regex syntax llguidance reads."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise GrammarError(f"regex is {len(pattern)} characters, over the limit of {MAX_PATTERN_CHARS}")
    return _RegexParser(pattern).parse()
