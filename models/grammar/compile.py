"""Regexes and JSON schemas -> llguidance grammars, validated under this node's limits.

llguidance (https://github.com/guidance-ai/llguidance) builds the token mask of a
grammar lazily, and counts the work of every step in "fuel": a grammar that would
cost more than `grammar_limits()` allows fails (here, at compile time, or at the step
that runs out) instead of stalling the decode thread. Fuel is counted, not timed,
so a grammar fails the same way on every node. The limits bound the mask of one
token to a few milliseconds on a 2-core machine (README: the cost table).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import llguidance
    from llguidance._lib import JsonCompileOptions

from models.grammar.errors import GrammarError
from models.grammar.regex import translate_regex
from models.grammar.schema import normalize_schema

# What one grammar may cost. llguidance's speeds: lexer fuel ~14k/ms, Earley items ~20k/ms,
# initial lexer fuel ~50k/ms; a lexer state takes 1-2 kB.
STEP_LEXER_FUEL = 40_000  # per token mask (library default 200_000)
STEP_MAX_ITEMS = 20_000  # Earley items per token (default 50_000)
INITIAL_LEXER_FUEL = 500_000  # building the lexer at compile time (default 1_000_000)
MAX_LEXER_STATES = 20_000  # lexer states over a whole generation, ~40 MB at most (default 250_000)
MAX_GRAMMAR_SIZE = 100_000  # symbols in the grammar's productions (default 500_000)
MAX_ITEMS_IN_ROW = 2_000  # branching of one production row (the default)

# JSON as the SDK's models write it: `{"a": 1, "b": [2, 3]}`, no free whitespace to wander in.
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,  # keywords llguidance does not implement are ignored, as llama.cpp's converter did
}


def grammar_limits() -> llguidance.LLParserLimits:
    """The limits every constraint is validated and run under."""
    import llguidance  # here, not at module level: the daemon imports this module and loads llguidance only on use

    return llguidance.LLParserLimits(
        max_items_in_row=MAX_ITEMS_IN_ROW,
        initial_lexer_fuel=INITIAL_LEXER_FUEL,
        step_lexer_fuel=STEP_LEXER_FUEL,
        step_max_items=STEP_MAX_ITEMS,
        max_lexer_states=MAX_LEXER_STATES,
        max_grammar_size=MAX_GRAMMAR_SIZE,
        verbose_errors=False,  # error texts must not quote the parser's state
    )


def regex_grammar(pattern: str) -> str:
    """A validated llguidance grammar matching exactly the strings `pattern` (Python `re`) matches as a whole."""
    import llguidance

    try:
        return _validated(llguidance.LLMatcher.grammar_from_regex(translate_regex(pattern)), "regex")
    except GrammarError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is the constraint's fault
        raise GrammarError(f"regex cannot be turned into a grammar ({type(exc).__name__})") from None


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A validated llguidance grammar for JSON following `schema` (OpenAI form, or Gemini's upper-case form)."""
    import llguidance

    try:
        prepared = _prepared(normalize_schema(schema))
        text = json.dumps(prepared, allow_nan=False)
        return _validated(llguidance.LLMatcher.grammar_from_json_schema(text, overrides=_JSON_OPTIONS), "json_schema")
    except GrammarError:
        raise
    except RecursionError:
        raise GrammarError("json_schema nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the constraint's fault
        # The message of a library error may quote the schema: task data, which error texts never carry.
        raise GrammarError(f"json_schema cannot be turned into a grammar ({type(exc).__name__})") from None


def grammar_for(json_schema: dict[str, Any] | None, regex: str | None) -> str | None:
    """The grammar of a request's constraint (the regex takes precedence), or None when it has none."""
    if regex is not None:
        return regex_grammar(regex)
    if json_schema is not None:
        return json_schema_grammar(json_schema)
    return None


def _prepared(schema: Any) -> Any:
    """`schema` as llguidance should read it.

    - every string `pattern` rewritten from Python `re` syntax (the SDK's) into llguidance's;
    - an object with `properties` and no `additionalProperties` takes no other keys, as llama.cpp's
      converter (used before) and Gemini read it: the model writes the listed properties only.
    """
    if isinstance(schema, list):
        return [_prepared(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = translate_regex(value)
        elif key == "properties" and isinstance(value, dict):  # property names are data, not keywords
            out[key] = {name: _prepared(prop) for name, prop in value.items()}
        else:
            out[key] = _prepared(value)
    if isinstance(out.get("properties"), dict):
        out.setdefault("additionalProperties", False)
    return out


def _validated(grammar: str, what: str) -> str:
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=grammar_limits())
    if error:
        raise GrammarError(f"{what} cannot be turned into a grammar: {_reason(error)}")
    return grammar


# What llguidance quotes of the schema: literals ("..."), names and pointers ('...'), dumps ((And ...)),
# and the word after "type:". Error texts are not encrypted and carry no task data (PROTOCOL.md section 5).
_QUOTED = re.compile(r"\"[^\"]*\"?|'[^']*'?|`[^`]*`?|\(.*?\)|(?<=type: )\S+")


def _reason(error: str) -> str:
    """The gist of a llguidance error: its `error:` line when it has one, without what it quotes of the schema."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    picked = next((line for line in lines if line.startswith("error:")), lines[0] if lines else "refused")
    return _QUOTED.sub("...", picked.removeprefix("error:").strip())[:200]
