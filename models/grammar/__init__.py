"""Constrained decoding: JSON schemas and regexes turned into llguidance grammars under this node's limits.

- `errors.py`   `GrammarError`: a constraint refused (deterministic: `Invalid prompt: ` for a task)
- `regex.py`    Python `re` syntax (the SDK's) -> the Rust regex syntax llguidance reads
- `schema.py`   Gemini's upper-case schema form -> plain JSON schema
- `compile.py`  regex / JSON schema -> a validated llguidance grammar; the fuel and size limits
- `matcher.py`  `Constraint`: one request's grammar state on a model's vocabulary (the token masks)
- `checks.py`   `answer_check`: the answer validated against its JSON schema (what decoding did not enforce)
"""

from models.grammar.checks import AnswerCheck, answer_check
from models.grammar.compile import grammar_for, grammar_limits, json_schema_grammar, regex_grammar
from models.grammar.errors import GrammarError
from models.grammar.regex import translate_regex
from models.grammar.schema import normalize_schema

__all__ = [
    "AnswerCheck",
    "GrammarError",
    "answer_check",
    "grammar_for",
    "grammar_limits",
    "json_schema_grammar",
    "normalize_schema",
    "regex_grammar",
    "translate_regex",
]
