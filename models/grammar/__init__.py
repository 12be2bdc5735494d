"""Constrained decoding: JSON schemas and regexes turned into GBNF that llama.cpp is known to parse."""

from models.grammar.gbnf import GrammarError, check_gbnf
from models.grammar.regex import regex_to_gbnf
from models.grammar.schema import json_schema_to_gbnf, normalize_schema

__all__ = ["GrammarError", "check_gbnf", "json_schema_to_gbnf", "normalize_schema", "regex_to_gbnf"]
