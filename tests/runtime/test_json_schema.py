"""JSON-schema outputs (json_schema): what compile_schema takes and refuses, that every text the
recognizer completes is valid against the schema (checked by the jsonschema package), and
generation against HuggingFace's greedy pick among the tokens that continue a valid value."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.json_schema import SchemaError, compile_schema
from kiln_testing import hf_json_greedy

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": -5, "exclusiveMaximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "color": {"enum": ["red", "green", "bl\u00e9"]},
        "pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
        "score": {"type": ["number", "null"]},
        "kind": {"const": "person"},
    },
    "required": ["name", "age", "kind"],
    "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "integer"},
                                                        "tricks": {"type": "array"}},
                      "required": ["legs"]}},
}
TREE = {  # recursion through $ref, as pydantic writes a model that holds itself
    "$defs": {"Node": {"type": "object", "properties": {
        "v": {"type": "boolean"},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
        "required": ["v", "kids"]}},
    "$ref": "#/$defs/Node",
}
OPEN = {"type": "object", "properties": {"id": {"type": "integer"}},
        "additionalProperties": {"type": "array", "items": {"oneOf": [{"type": "string"},
                                                                      {"type": "boolean"}]}}}
ROWS = {"type": "array", "items": {"type": "object"}, "maxItems": 4}
CALLS = {"type": "object", "minProperties": 1, "maxProperties": 2, "additionalProperties": False,
         "properties": {"f": {"type": "object", "properties": {"x": {"type": "integer"}},
                              "required": ["x"]},
                        "g": {"type": "object", "maxProperties": 1},
                        "h": {"type": "null"}}}


def feeds(schema, text: str) -> tuple[bool, bool]:
    """(whether every byte of text feeds, whether the value is then complete)."""
    state = _core.JsonObjectPrefix(schema)
    return state.feed(text.encode()), state.complete


@pytest.mark.parametrize("schema,valid,invalid", [
    (PERSON,
     ['{"name": "ann", "age": 31, "kind": "person"}',
      '{"kind":"person","tags":["a","b","c"],"color":"bl\u00e9","name":"x","age":-2,'
      '"pet":{"legs":4,"tricks":[1,{"a":[]}]},"score":null}',
      '{"name":"\u00e9","age":0,"kind":"person","pet":null,"score":-1.5e3}'],
     ['{"name": "ann", "age": 31}',                                    # kind is required
      '{"name": "ann", "age": 3.5, "kind": "person"}',                 # age is an integer
      '{"name": "ann", "age": 3, "kind": "robot"}',                    # const
      '{"name": "a", "age": 3, "kind": "person", "tags": []}',         # minItems
      '{"name": "a", "age": 3, "kind": "person", "tags": ["a","b","c","d"]}',
      '{"name": "a", "age": 3, "kind": "person", "color": "blue"}',
      '{"name": "a", "age": 3, "kind": "person", "pet": {"tricks": []}}',
      '{"name": "a", "age": 3, "kind": "person", "extra": 1}',        # no other property
      '{"name": "a", "name": "b", "age": 3, "kind": "person"}',
      '{"name": "", "age": 3, "kind": "person"}',                     # minLength
      '{"name": "abcdefghijklm", "age": 3, "kind": "person"}',        # maxLength
      '{"name": "a", "age": 150, "kind": "person"}',                  # exclusiveMaximum
      '{"name": "a", "age": -6, "kind": "person"}',                   # minimum
      '["name"]']),
    (TREE,
     ['{"v": true, "kids": []}', '{"kids": [{"v": false, "kids": [{"v": true, "kids": []}]}],'
      ' "v": true}'],
     ['{"v": true}', '{"v": 1, "kids": []}',
      '{"v": true, "kids": [{"v": true, "kids": []}, {"v": true, "kids": []}, '
      '{"v": true, "kids": []}]}']),
    (OPEN,
     ['{"id": 7, "x": ["a", true], "y": []}', '{}'],
     ['{"id": "7"}', '{"x": [1]}', '{"x": "a"}']),
    (ROWS, ['[]', '[{}, {"a": [1, "b"]}]'], ['[1]', '[{}, {}, {}, {}, {}]', '{}']),
    (CALLS, ['{"f": {"x": 1}}', '{"g": {"a": [1]}, "h": null}', '{"h": null, "g": {}}'],
     ['{}', '{"f": {"x": 1}, "g": {}, "h": null}', '{"g": {"a": 1, "b": 2}}', '{"k": 1}']),
])
def test_recognizer_takes_what_the_schema_allows(schema, valid, invalid):
    compiled = compile_schema(schema)
    for text in valid:
        jsonschema.validate(json.loads(text), schema)
        assert feeds(compiled, text) == (True, True), text
    strict = dict(schema, additionalProperties=False) if "properties" in schema else schema
    for text in invalid:
        if not repeats_a_key(text):  # (JSON Schema sees only the last of a repeated key)
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(json.loads(text), strict)
        assert feeds(compiled, text) != (True, True), text


def repeats_a_key(text: str) -> bool:
    def pairs(items):
        if len({k for k, _ in items}) < len(items):
            raise KeyError("repeated")
        return dict(items)
    try:
        json.loads(text, object_pairs_hook=pairs)
    except KeyError:
        return True
    return False


@pytest.mark.parametrize("schema", [PERSON, TREE, OPEN, ROWS, CALLS],
                         ids=["person", "tree", "open", "rows", "calls"])
def test_every_text_the_recognizer_completes_is_valid(schema):
    """Random walks over the bytes the recognizer allows (closing ones favoured so walks end):
    each completed text is valid JSON that the jsonschema package accepts."""
    texts = completed_walks(compile_schema(schema), seed=3, limit=600, closing=0.6)
    for text in texts:
        jsonschema.validate(json.loads(text.decode()), schema)
    assert len(texts) >= 30


def completed_walks(compiled, seed: int, limit: int, closing: float, walks: int = 60):
    """The texts that `walks` random walks over the bytes the recognizer allows complete
    within `limit` bytes; a closing byte (} ] " ,) is picked with probability `closing` where
    one is allowed, so that walks end. No walk may reach a dead end."""
    rng = random.Random(seed)
    alphabet = [bytes([b]) for b in range(256)]
    texts = []
    for _ in range(walks):
        state, text = _core.JsonObjectPrefix(compiled), b""
        while not state.complete and len(text) < limit:
            allowed = [b for b in alphabet if state.copy().feed(b)]
            assert allowed, text
            closers = [b for b in allowed if b in (b"}", b"]", b'"', b",")]
            pick = rng.choice(closers if closers and rng.random() < closing else allowed)
            assert state.feed(pick)
            text += pick
        if state.complete:
            texts.append(text)
    return texts


def test_string_lengths_count_characters_as_json_schema_does():
    """minLength and maxLength count code points: an escape, a UTF-8 character and a surrogate
    pair of escapes are one each, as the jsonschema package counts them."""
    schema = {"type": "object", "properties": {"s": {"minLength": 2, "maxLength": 3}}}
    compiled = compile_schema(schema)
    for s in ["ab", "abc", "\\n\\u0041", "\u00e9\u20ac", "\\ud83d\\ude00x", "\U0001F600x",
              "a", "\\ud83d\\ude00", "abcd", "\u00e9\u00e9\u00e9\u00e9"]:
        text = '{"s": "%s"}' % s
        try:
            jsonschema.validate(json.loads(text), schema)
            valid = True
        except jsonschema.ValidationError:
            valid = False
        assert feeds(compiled, text) == (valid, valid), s


def test_a_pydantic_models_schema_is_enforced():
    """The schema pydantic writes for a model (nested models through $defs, a str enum, a
    recursive Optional, bounded int and str fields, defaults): every text the recognizer
    completes is an instance the model itself accepts."""
    from enum import Enum
    from typing import Optional

    from pydantic import BaseModel, Field

    class Color(str, Enum):
        red = "red"
        blue = "blue"

    class Pet(BaseModel):
        name: str = Field(max_length=12)
        legs: int = Field(default=4, ge=0, le=8)

    class Person(BaseModel):
        name: str = Field(description="full name")
        age: int = Field(ge=0, lt=150)
        color: Color
        pets: list[Pet] = []
        boss: Optional["Person"] = None
        score: Optional[float] = None

    schema = Person.model_json_schema()
    texts = completed_walks(compile_schema(schema), seed=9, limit=800, closing=0.7)
    for text in texts:
        jsonschema.validate(json.loads(text.decode()), schema)
        Person.model_validate_json(text)
    assert len(texts) >= 20


@pytest.mark.parametrize("schema,fragment", [
    ({"type": "string"}, "must describe an object or an array"),
    ({"enum": [{"a": 1}]}, "must describe an object or an array"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},
     "schema.properties.a: the keyword 'pattern' is not supported"),
    ({"type": "object", "properties": {"a": {"type": "number", "minimum": 0}}},
     "minimum and maximum are supported on type integer only"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 2.5}}},
     "no integer lies between its bounds (3 to 2)"),
    ({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}},
     "'multipleOf' is not supported"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
     "'format' is not supported"),
    ({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]},
     "two alternatives can both begin with '{'"),
    ({"type": "object", "properties": {"n": {"anyOf": [{"type": "integer"},
                                                       {"type": "number"}]}}},
     "can both begin with '-'"),
    ({"type": "object", "properties": {"a": {"anyOf": [{}, {"type": "null"}]}}},
     "allows any value"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s"}}},
     "only references within the schema"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}, "points at nothing"),
    ({"$defs": {"A": {"$ref": "#/$defs/A"}}, "type": "object",
      "properties": {"a": {"$ref": "#/$defs/A"}}}, "refers to itself"),
    ({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "type": "object",
      "properties": {"a": {"$ref": "#/$defs/A"}}}, "a union that contains itself"),
    ({"type": "object", "required": ["z"], "properties": {}}, "required names 'z'"),
    ({"type": "array", "items": [{"type": "string"}]}, "tuple items"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "maxItems 2 is below minItems 3"),
    ({"type": "object", "properties": {"a": {}}, "minProperties": 2},
     "minProperties is 2 but only 1 properties are allowed"),
    ({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"],
      "maxProperties": 1}, "maxProperties is 1 but 2 properties are required"),
    ({"type": "object", "properties": {"a": {"type": "integer", "maximum": 2 ** 63}}},
     "bounds must lie within +-2^62"),
    ({"type": "object", "properties": {"a": {"maxLength": -1}}},
     "schema.properties.a.maxLength must be a non-negative integer"),
    ({"type": "object", "properties": {"a": {"type": "text"}}}, "type 'text' is not one of"),
    ({"type": "object", "properties": {"a": {"type": "integer", "enum": ["x"]}}},
     "no value of enum or const is of its type"),
    ({"type": "object", "properties": {"a": False}}, "is false"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(65)}}, "at most 64"),
    ("{not json", "not valid JSON"),
    ([1], "a JSON schema is a JSON object"),
])
def test_compile_refuses_what_it_cannot_enforce(schema, fragment):
    with pytest.raises(SchemaError) as e:
        compile_schema(schema)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_schema_sent_again_is_compiled_once():
    """The same schema, as a dict with its keys in another order or as JSON text, gives the
    same compiled object; another schema another one."""
    first = compile_schema(SMALL)
    again = compile_schema(json.dumps(dict(reversed(list(SMALL.items())))))
    assert again is first
    assert compile_schema(dict(SMALL, required=["ok"])) is not first


def test_compile_reads_literals_names_and_defaults():
    schema = compile_schema(json.dumps({  # its JSON text too
        "type": "object", "title": "ignored", "description": "annotations are ignored",
        "properties": {'q"uote': {"type": "integer", "enum": [3, 1, "x"]},
                       "\u00e9": {"const": {"b": [1, 2], "a": None}}},
        "required": ['q"uote']}))
    top = schema  # names as JSON writes them, sorted as bytes; literals compact JSON
    assert len(top) == 3
    assert feeds(top, '{"q\\"uote": 1, "\u00e9": {"b":[1,2],"a":null}}') == (True, True)
    assert feeds(top, '{"q\\"uote": "x"}')[0] is False  # "x" is not an integer
    assert feeds(top, '{"\u00e9": {"b": [1, 2], "a": null}}')[0] is False  # not compact
    # No properties: any property; properties without additionalProperties: only those.
    assert feeds(compile_schema({"type": "object"}), '{"any": [1, {"x": null}]}') == (True, True)
    assert feeds(compile_schema({"type": "object", "properties": {}}), '{"a"')[0] is False
    # Names that begin alike, one a prefix of the others ("a" sorts before "a!" and "a b").
    alike = compile_schema({"type": "object", "properties": {"a b": {}, "a": {}, "a!": {}}})
    assert feeds(alike, '{"a!": 1, "a": 2, "a b": 3}') == (True, True)
    assert feeds(alike, '{"a": 1, "a": 2}')[0] is False


SMALL = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                          "mood": {"enum": ["calm", "busy"]},
                                          "n": {"type": ["integer", "null"]}},
         "required": ["ok", "mood", "n"]}


def test_json_schema_generation_equals_huggingface(hf_and_runner):
    model, runner = hf_and_runner
    tok = runner.tokenizer
    table = tok.token_table(runner.vocab_size)
    schema = compile_schema(SMALL)
    prompts = [tok.encode(t) for t in ["the object", "class definitions", "In the module"]]
    out = runner.generate(prompts, max_new_tokens=60, json_schema=schema, return_dict=True)
    for i, prompt in enumerate(prompts):
        want, complete = hf_json_greedy(model, table, prompt, 60, schema)
        got = out["output_ids"][i, 0, len(prompt): out["sequence_lengths"][i, 0]].tolist()
        assert got == want, i
        assert out["finish_reasons"][i] == ("stop_words" if complete else "length")
        if complete:
            jsonschema.validate(json.loads(tok.decode(got)), SMALL)
    # Sampled, from a dict: every completed output is valid.
    out = runner.generate(prompts, max_new_tokens=80, json_schema=SMALL, temperature=1.0,
                          top_k=0, random_seed=5, return_dict=True)
    for i, prompt in enumerate(prompts):
        got = out["output_ids"][i, 0, len(prompt): out["sequence_lengths"][i, 0]].tolist()
        if out["finish_reasons"][i] == "stop_words":
            jsonschema.validate(json.loads(tok.decode(got)), SMALL)


def test_bad_json_schema_requests_fail_with_one_line(hf_and_runner):
    _, runner = hf_and_runner
    with pytest.raises(KilnError, match="json_object and json_schema do not combine"):
        runner.generate([[1, 2]], max_new_tokens=4, json_object=True, json_schema=SMALL)
    with pytest.raises(SchemaError, match="'pattern' is not supported"):
        runner.generate([[1, 2]], max_new_tokens=4, json_schema={
            "type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}})
    # The executor refuses a schema without the token table it reads tokens by, alone.
    req = _core.Request([1, 2], max_new_tokens=4, json_schema=compile_schema(SMALL))
    rid, q = runner.router.submit(req)
    resp = q.get(timeout=30)
    assert resp.is_final and "token_table" in resp.error_message
