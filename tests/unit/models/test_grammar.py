"""Constrained decoding for the schema forms Dria's SDK sends: Python regexes translated for
llguidance, Gemini schemas, and real constrained generation with SmolLM2 on the batched runtime.

The SDK's schema strings (tests/support/data/sdk_schemas.json) were made by the SDK's own
SchemaParser (tests/support/sdk/schemas.py); test_dria_sdk.py checks the file still matches it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llguidance
import pytest

from models.batching import BatchedLlamaModel
from models.grammar import GrammarError, json_schema_grammar, normalize_schema, regex_grammar, translate_regex
from models.grammar.matcher import Constraint, vocab_tokenizer
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from tests.support.model_file import loaded_smollm2, smollm2_vocab
from workflows import WorkflowValidationError, parse_workflow

SDK_SCHEMAS: dict[str, dict[str, str]] = json.loads(
    (Path(__file__).resolve().parents[2] / "support" / "data" / "sdk_schemas.json").read_text(encoding="utf-8")
)
OPTIONS = RuntimeOptions(n_ctx=1024, n_threads=1)


def sdk_regex(model: str) -> str:
    return base64.b64decode(SDK_SCHEMAS[model]["ollama"]).decode("utf-8")


def grammar_matches(grammar: str, text: str, tokenizer: llguidance.LLTokenizer) -> bool:
    """Whether the grammar accepts `text` as a complete match, token by token, then an end token."""
    constraint = Constraint(tokenizer, grammar)
    for token in [*tokenizer.tokenize_str(text), tokenizer.eos_token]:
        if not constraint.allows(token):
            return False
        constraint.consume(token)
    return True


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[llguidance.LLTokenizer]:
    with smollm2_vocab() as vocab:
        yield vocab_tokenizer(vocab, [0, 2])


# --- regexes the SDK really sends ------------------------------------------------------


@pytest.mark.parametrize("model", sorted(SDK_SCHEMAS))
def test_every_sdk_regex_becomes_a_valid_grammar(model: str, tokenizer: llguidance.LLTokenizer) -> None:
    grammar = regex_grammar(sdk_regex(model))
    assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer) == ""


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        ("Person", '{"name": "Ada", "age": 36}', True),
        ("Person", '{"name":"Ada","age":-3}', True),
        ("Person", '{"name": "A\\"da", "age": 0}', True),
        ("Person", '{"name": "Ada", "age": 036}', False),
        ("Person", '{"name": "Ada"}', False),
        ("Person", '{"age": 36, "name": "Ada"}', False),
        (
            "Review",
            '{"title": "Good", "score": 4.5, "recommended": true, "tags": ["x", "y"], "color": "red", '
            '"kind": "a", "code": "AB.12", "stars": 3, "friends": [{"name": "B", "age": 2}]}',
            True,
        ),
        (
            "Review",
            '{"title": "Good", "score": 4.5, "recommended": true, "tags": [], "color": "blue", '
            '"kind": "b\\"c", "nick": null, "code": "AB.12", "stars": 3, "friends": []}',
            True,
        ),
        (
            "Review",
            '{"title": "Good", "score": 4.5, "recommended": true, "tags": [], "color": "green", '
            '"kind": "a", "code": "AB.12", "stars": 3, "friends": []}',
            False,
        ),
        (
            "Review",
            '{"title": "Good", "score": 4.5, "recommended": true, "tags": [], "color": "red", '
            '"kind": "a", "code": "AB12", "stars": 3, "friends": []}',
            False,
        ),
        ("Dialogue", '{"instruction": "Hi", "responses": ["a", "b", "c"]}', True),
        ("Dialogue", '{"instruction": "Hi", "responses": ["a", "b", "c", "d"]}', False),
    ],
)
def test_the_grammar_accepts_exactly_what_the_sdk_regex_matches(
    model: str, text: str, expected: bool, tokenizer: llguidance.LLTokenizer
) -> None:
    regex = sdk_regex(model)
    assert (re.fullmatch(regex, text) is not None) == expected  # the case itself is right
    assert grammar_matches(regex_grammar(regex), text, tokenizer) == expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"^[A-Z]{2}\.\d+$", "AB.12", True),
        (r"^[A-Z]{2}\.\d+$", "AB-12", False),
        (r"a{,3}b{2,}", "aaabb", True),
        (r"a{,3}b{2,}", "aaaabb", False),
        (r"(?:ab|)x", "x", True),
        (r"(?P<n>ab)+x", "ababx", True),
        (r'"q\"[^"\\]*"', '"q"zz"', True),
        (r"\D\W\S.", "1!bc", False),
        (r"\D\W\S.", "a!bc", True),
        (r"[\u00e9-\u00ea\-]+", "é-ê", True),
        (r"x.y", "x\ny", False),
        (r"a*?b", "aab", True),
    ],
)
def test_regex_features_match_as_python_re_does(
    pattern: str, text: str, expected: bool, tokenizer: llguidance.LLTokenizer
) -> None:
    assert (re.fullmatch(pattern, text) is not None) == expected
    assert grammar_matches(regex_grammar(pattern), text, tokenizer) == expected


def test_translated_regexes_spell_every_symbol_as_a_code_point() -> None:
    # Rust's regex syntax differs from Python's (`\\d` is Unicode there, `{,3}` does not parse).
    assert translate_regex(r"^\d{,3}\.(a|b)$") == r"[0-9]{0,3}\x{2E}(?:(?:a|b))"
    assert translate_regex(r"[^\"\\]x.") == r"[^\x{22}\x{5C}]x[^\x{A}]"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=a)b", "lookaround"),
        ("(?i)a", "inline flags"),
        ("a**", "multiple repeat"),
        ("a++", "multiple repeat"),
        (r"(a)\1", "backreferences"),
        ("(a", "missing ')'"),
        ("a)", "unbalanced"),
        ("[z-a]", "bad character range"),
        (r"\bword", "word boundaries"),
        ("a{3,1}", "max < min"),
        ("a{99999}", "repetition bound"),
        ("*a", "nothing to repeat"),
        ("a^b", "anchor"),
        (r"[\D]", "negated shorthand"),
        (r"\q", "unknown escape"),
        ("[abc", "unexpected end"),
        ("(" * 5000, "groups nest more than 100 deep"),
        ("(" * 1000 + ")" * 1000, "groups nest more than 100 deep"),
        ("((a{100}){100}){100}", "expands to more than"),
    ],
)
def test_unsupported_or_broken_regexes_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(reason)):
        regex_grammar(pattern)


# --- JSON schemas: OpenAI and Gemini forms -------------------------------------------


def test_gemini_schemas_are_lower_cased_into_json_schema() -> None:
    gemini = json.loads(SDK_SCHEMAS["Review"]["gemini"])
    normalized = normalize_schema(gemini)
    assert normalized["type"] == "object"
    assert normalized["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert normalized["properties"]["kind"] == {"type": "string"}  # a bare "STRING" property
    nested = normalize_schema({"type": "ARRAY", "items": {"type": {"type": "ARRAY", "items": {"type": "INTEGER"}}}})
    assert nested == {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    assert normalize_schema({"type": "object", "properties": {"STRING": {"type": "string"}}})["properties"] == {
        "STRING": {"type": "string"}
    }


@pytest.mark.parametrize("model", sorted(SDK_SCHEMAS))
@pytest.mark.parametrize("form", ["openai", "gemini"])
def test_sdk_json_schemas_become_valid_grammars(model: str, form: str, tokenizer: llguidance.LLTokenizer) -> None:
    grammar = json_schema_grammar(json.loads(SDK_SCHEMAS[model][form]))
    assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer) == ""


def test_schema_patterns_use_our_regex_translation(tokenizer: llguidance.LLTokenizer) -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": r'^[A-Z]{2}\.\d+"?$'}},
        "required": ["code"],
    }
    grammar = json_schema_grammar(schema)
    assert grammar_matches(grammar, '{"code": "AB.12"}', tokenizer)
    assert not grammar_matches(grammar, '{"code": "AB-12"}', tokenizer)


def test_bad_json_schemas_are_grammar_errors() -> None:
    with pytest.raises(GrammarError, match="regex"):
        json_schema_grammar({"type": "string", "pattern": "(?=x)"})
    with pytest.raises(GrammarError, match="json_schema cannot be turned into a grammar"):
        json_schema_grammar({"$ref": "#/definitions/missing"})
    with pytest.raises(GrammarError, match="json_schema cannot be turned into a grammar"):
        json_schema_grammar({"type": "teleport"})
    with pytest.raises(GrammarError, match="groups nest more than 100 deep"):
        json_schema_grammar({"type": "string", "pattern": "(" * 1000})


# --- through the workflow: every form accepted, a bad one is a validation error ------


def _workflow(schema: str) -> dict[str, Any]:
    return {
        "config": {"max_steps": 5, "max_time": 30},
        "tasks": [
            {
                "id": "a",
                "operator": "generation",
                "messages": [{"role": "user", "content": "Hi"}],
                "outputs": [{"type": "write", "key": "r"}],
                "schema": schema,
            }
        ],
        "steps": [{"source": "a", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "r"}},
    }


@pytest.mark.parametrize("form", ["ollama", "openai", "gemini"])
def test_workflows_accept_every_sdk_schema_form(form: str) -> None:
    parse_workflow(_workflow(SDK_SCHEMAS["Person"][form]))


def test_a_schema_that_cannot_become_a_grammar_fails_validation() -> None:
    bad_regex = base64.b64encode(rb"(?<=a)b").decode()
    with pytest.raises(WorkflowValidationError, match="unsupported schema: regex: lookaround"):
        parse_workflow(_workflow(bad_regex))
    with pytest.raises(WorkflowValidationError, match="unsupported schema"):
        parse_workflow(_workflow(json.dumps({"type": "string", "pattern": "a{5,1}"})))


# --- real constrained generation -----------------------------------------------------


def _person_request(**constraint: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content="Describe a person named Ada aged 36 as JSON.")],
        max_tokens=60,
        **constraint,
    )


@pytest.fixture(scope="module")
def batched() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(OPTIONS, parallel=3) as model:
        yield model


def test_batched_runtime_decodes_under_every_sdk_form_at_once(batched: BatchedLlamaModel) -> None:
    regex = sdk_regex("Person")

    async def run() -> list[str]:
        results = await asyncio.gather(
            batched.generate(_person_request(regex=regex)),
            batched.generate(_person_request(json_schema=json.loads(SDK_SCHEMAS["Person"]["openai"]))),
            batched.generate(_person_request(json_schema=json.loads(SDK_SCHEMAS["Person"]["gemini"]))),
        )
        return [r.text for r in results]

    by_regex, by_openai, by_gemini = asyncio.run(run())
    assert re.fullmatch(regex, by_regex), by_regex
    for text in (by_regex, by_openai):
        person = json.loads(text)
        assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    assert isinstance(json.loads(by_gemini), dict)


def test_a_grammar_the_model_would_never_follow_unaided_still_holds_at_any_temperature(
    batched: BatchedLlamaModel,
) -> None:
    # The unconstrained pick is refused at almost every step: the full-vocabulary fallback decides.
    pattern = r"ZQX-[0-9]{3}(;ZQX-[0-9]{3}){0,2}"

    async def run() -> list[str]:
        results = await asyncio.gather(
            *[
                batched.generate(_person_request(regex=pattern).model_copy(update={"temperature": t, "seed": 7}))
                for t in (0.0, 0.8, 1.5)
            ]
        )
        return [r.text for r in results]

    for text in asyncio.run(run()):
        assert re.fullmatch(pattern, text), text


MARK = "QZMARKERQZ"
# Schemas llguidance refuses with an error that quotes them: error results are plaintext (PROTOCOL.md section 5).
QUOTING = {
    "ref_bad": {"$ref": f"#/definitions/{MARK}"},
    "const_mismatch": {"type": "integer", "const": MARK},
    "allof": {"allOf": [{"type": "string", "const": MARK}, {"type": "string", "const": MARK + "x"}]},
    "type_bad": {"type": MARK},
}


@pytest.mark.parametrize("schema", QUOTING.values(), ids=list(QUOTING))
def test_a_refused_schema_is_not_quoted_in_the_error(schema: dict[str, Any]) -> None:
    with pytest.raises(GrammarError) as refused:
        json_schema_grammar(schema)
    assert MARK not in str(refused.value), str(refused.value)


def test_the_answer_check_is_bounded_on_hostile_schemas() -> None:
    """A schema's answer check runs on the execution process's loop, beside other tasks: jsonschema took 6-8 s
    for `anyOf` over 500 branches on 2,000 items, and 2 s for `uniqueItems` over 2,000 objects."""
    import time

    from models.grammar import answer_check

    hostile = [
        ({"type": "array", "items": {"anyOf": [{"const": i} for i in range(500)]}}, [499] * 2000),
        ({"type": "array", "items": {"not": {"anyOf": [{"const": i} for i in range(500)]}}}, [600] * 2000),
        ({"type": "array", "items": {"enum": list(range(2000))}}, [1999] * 2000),
        ({"type": "array", "items": {"type": "object"}, "uniqueItems": True}, [{"a": i} for i in range(2000)]),
    ]
    for schema, answer in hostile:
        check = answer_check(schema)
        assert check is not None
        started = time.process_time()
        check(answer)
        assert time.process_time() - started < 1.0, schema
    unique = answer_check({"type": "array", "uniqueItems": True})
    assert unique is not None
    assert unique([{"a": 1}, {"a": 1.0}]) == "uniqueItems"  # JSON Schema: 1.0 equals 1
    assert unique([True, 1, "1"]) is None  # and true is not 1


def test_the_answer_check_fetches_no_reference() -> None:
    """jsonschema's default registry GETs any URL a `$dynamicRef` names (urllib, no timeout, outside the tools'
    egress policy): a workflow could make every node fetch a cloud metadata address, or hang on a tarpit."""
    import socket
    import threading

    from models.grammar import answer_check

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    seen: list[bytes] = []

    def listen() -> None:
        try:
            connection, _ = server.accept()
            seen.append(connection.recv(200))
            connection.close()
        except OSError:
            pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        check = answer_check({"type": "integer", "$dynamicRef": f"http://127.0.0.1:{server.getsockname()[1]}/x"})
        assert check is None or check(1) is None  # unchecked, never a request
        listener.join(4)
        assert seen == []
    finally:
        server.close()


def test_leaving_regexes_out_never_refuses_a_valid_answer() -> None:
    from models.grammar import answer_check

    negated = [
        ({"type": "string", "not": {"pattern": "^a"}}, "bcd"),  # `not {}` without its regex: every answer refused
        ({"oneOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "string", "pattern": "^[a-z]+$"}]}, "abc"),
        ({"type": "string", "if": {"pattern": "^a"}, "then": {"maxLength": 2}}, "bcdef"),
    ]
    for schema, valid in negated:
        check = answer_check(schema)
        assert check is None or check(valid) is None, schema
    looped = answer_check({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    assert looped is None or looped(1) is None  # a `$ref` loop cannot be judged: not the answer's fault
    plain_not = answer_check({"type": "array", "not": {"maxItems": 1}})  # no regex: the check still holds
    assert plain_not is not None and plain_not([1]) == "not"
