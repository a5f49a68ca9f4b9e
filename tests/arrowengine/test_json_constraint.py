"""JSON-constrained decoding: every prefix the constraint admits is valid, and whatever the logits say, a
completed output parses and matches its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import ConfigError
from arrowengine.runtime.llm.json_constraint import JsonConstraint, check_prefix, parse_format

REPO = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "required": ["principles"],
          "properties": {"principles": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 3}}}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.sampled_from([None, 2]))
def test_every_prefix_of_a_json_object_is_admitted_and_the_whole_is_complete(obj, indent):
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    for end in range(len(text)):
        assert check_prefix(text[:end]) == (True, False), text[:end]
    assert check_prefix(text) == (True, True)


@pytest.mark.parametrize(("text", "verdict"), [
    ('{"principles": ["abc"]}', (True, True)),
    ('{"principles": []', (False, False)),  # minItems 1
    ('{"principles": ["ab"', (False, False)),  # minLength 3
    ('{"other', (False, False)),  # only the schema's keys
    ('{}', (False, False)),  # principles is required
    ('{"principles": ["abc"]} trailing', (False, False)),
    ('{"principles": ["a\nb"]}', (False, False)),  # a raw newline inside a string
    ('{"principles":' + "\n" * 3, (False, False)),  # whitespace runs are capped
    ('[1, 2]', (False, False)),  # the top level is the schema's object
])
def test_schema_prefixes(text, verdict):
    assert check_prefix(text, SCHEMA) == verdict


def test_max_length_leaves_only_the_closing_quote():
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}}
    assert check_prefix('{"s": "abc', schema) == (True, False)
    assert check_prefix('{"s": "abcd', schema) == (False, False)
    assert check_prefix('{"s": "abc"}', schema) == (True, True)


def test_enum_numbers_and_literals():
    schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "n": {"type": "integer"},
                                               "x": {"type": "number"}, "ok": {"type": "boolean"}}}
    assert check_prefix('{"mood": "ha', schema) == (True, False)
    assert check_prefix('{"mood": "hx', schema) == (False, False)
    assert check_prefix('{"n": 1.5', schema) == (False, False)
    assert check_prefix('{"x": -0.5e+3, "ok": fal', schema) == (True, False)
    assert check_prefix('{"n": 012', schema) == (False, False)


def test_format_field_parsing():
    assert parse_format(None) is None and parse_format("json") == {}
    assert parse_format('{"type": "object"}') == {"type": "object"}
    with pytest.raises(ConfigError, match='format must be "json" or a JSON schema object'):
        parse_format("yaml")
    with pytest.raises(ConfigError, match='format must be "json" or a JSON schema object, got list'):
        parse_format([1])


@pytest.fixture(scope="module")
def tokenizer():
    model = REPO / "models" / "smollm2-135m-instruct"
    if not (model / "tokenizer.json").is_file():
        pytest.skip("models/smollm2-135m-instruct is missing; run python scripts/fetch_models.py")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model / "tokenizer.json"))


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([0.0, 1.0]))
def test_any_logits_give_a_valid_prefix_and_a_completed_output_matches_the_schema(tokenizer, seed, temperature):
    eos = tokenizer.token_to_id("<|im_end|>")
    constraint = JsonConstraint(tokenizer, SCHEMA, {eos})
    gen = torch.Generator().manual_seed(seed)
    bias = torch.zeros(tokenizer.get_vocab_size())
    for tok in ('"]', '"]}', "}", "]"):  # random logits rarely close anything; a nudge makes runs finish
        bias[tokenizer.token_to_id(tok) or 0] = 4.0
    for _ in range(120):
        logits = torch.randn(tokenizer.get_vocab_size(), generator=gen) + bias
        token = constraint.choose(logits, temperature, gen)
        constraint.advance(token)
        if token == eos:
            break
        assert check_prefix(constraint.text, SCHEMA)[0]
    if constraint.complete:
        jsonschema.validate(json.loads(constraint.text), SCHEMA)
        assert token == eos  # complete -> the next token is the end of sequence


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 60))
def test_first_character_memo_never_changes_a_verdict(tokenizer, seed, cut):
    """``allows(token, first)`` rejects by a token's first character; over a whole-vocabulary sample it gives
    exactly the verdicts of the full parse, at states inside keys, strings, arrays and after the value."""
    eos = tokenizer.token_to_id("<|im_end|>")
    constraint = JsonConstraint(tokenizer, SCHEMA, {eos})
    text = '{"principles": ["Keep a journal", "Sleep eight hours"]}'
    constraint.text = text[: min(cut, len(text))]
    constraint.complete = check_prefix(constraint.text, SCHEMA)[1]
    tokens = torch.randperm(tokenizer.get_vocab_size(), generator=torch.Generator().manual_seed(seed))[:400]
    first: dict[str, bool] = {}
    verdicts = [(constraint.allows(t, first), constraint.allows(t)) for t in tokens.tolist()]
    assert all(memo == full for memo, full in verdicts)
    assert first or constraint.complete  # the memo was used
