"""JSON schemas for structured output (OpenAI's response_format json_schema, vLLM's guided_json,
TensorRT-LLM's guided decoding "json_schema"): compile_schema turns one into the nodes
(csrc/runtime/json_schema.h) the executor's recognizer (json_object.h) reads token by token,
so the output is one JSON value valid against the schema.

What is enforced: `type` (one or a list), `properties`, `required`, `additionalProperties`
(absent beside `properties`: no other property, as OpenAI's strict mode and xgrammar read it),
`minProperties`, `maxProperties`, `items`, `minItems`, `maxItems`, `minLength`, `maxLength`
(characters: code points, so a
surrogate pair of \\u escapes is one; such a pair is not begun at the last character a
maxLength leaves), `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` on
integers (within +-2^62; digits are picked only while some integer they begin is within),
`enum`, `const`, `anyOf` / `oneOf` whose alternatives begin
with different characters (an object or null, a string or a number...), and local `$ref`
(`#`, `#/$defs/...`, `#/definitions/...`, recursion included). Annotations (title,
description, default, examples...) are ignored; any other keyword is refused with one line
naming it and where it is, rather than left unenforced. The top-level value is an object or an
array.
"""
from __future__ import annotations

import collections
import json
import math
import threading

from kiln import _core
from kiln.builder.errors import KilnError

KINDS = {"object": 1, "array": 2, "string": 4, "number": 8, "integer": 16, "boolean": 32,
         "null": 64}
ALL_KINDS = 127
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id",
                         "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
                         "definitions"})
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
SUPPORTED = frozenset({"type", "properties", "required", "additionalProperties",
                       "minProperties", "maxProperties", "items",
                       "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
                       "anyOf", "oneOf", "$ref", *BOUNDS})
OBJECT_KEYWORDS = ("properties", "required", "additionalProperties", "minProperties",
                   "maxProperties")
ARRAY_KEYWORDS = ("items", "minItems", "maxItems")
STRING_KEYWORDS = ("minLength", "maxLength")
MAX_NODES = 4096
# The characters a value of each kind begins with.
_FIRST = {1: "{", 2: "[", 4: '"', 8: "-0123456789", 16: "-0123456789", 32: "tf", 64: "n"}


class SchemaError(KilnError, ValueError):
    """A schema compile_schema cannot enforce; its text is one line."""


def compile_schema(schema) -> "_core.JsonSchema":
    """The compiled form of `schema` (a dict, or its JSON text), shared by the requests that
    use it: the last CACHED_SCHEMAS schemas compiled are kept, keyed by their canonical JSON,
    so a server's clients that send the same schema again reuse it (it is read only). Raises
    SchemaError saying what is wrong and where."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise SchemaError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema is a JSON object, got {type(schema).__name__}")
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        raise SchemaError(f"the JSON schema holds a value JSON cannot write: {e}") from None
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    done = _Compiler(schema).compile()  # (the schema as given: an enum's objects keep their order)
    with _CACHE_LOCK:
        _CACHE[key] = done
        while len(_CACHE) > CACHED_SCHEMAS:
            _CACHE.popitem(last=False)
    return done


CACHED_SCHEMAS = 64
_CACHE: collections.OrderedDict[str, "_core.JsonSchema"] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def compiled(schema) -> "_core.JsonSchema":
    """`schema` compiled, unless it is already (a `_core.JsonSchema`)."""
    return schema if isinstance(schema, _core.JsonSchema) else compile_schema(schema)


def literal(value) -> str:
    """The one text a value of enum or const must be written as: compact JSON, non-ASCII as
    itself."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise SchemaError(f"enum or const holds {value!r}, which JSON cannot write") from None


def _kind_of(value) -> int:
    if value is None:
        return KINDS["null"]
    if isinstance(value, bool):
        return KINDS["boolean"]
    if isinstance(value, int):
        return KINDS["integer"] | KINDS["number"]
    if isinstance(value, float):
        return KINDS["number"] | (KINDS["integer"] if value.is_integer() else 0)
    if isinstance(value, str):
        return KINDS["string"]
    return KINDS["array"] if isinstance(value, list) else KINDS["object"]


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.nodes: list = []
        self.refs: dict[str, int] = {}
        self.pending: dict[int, dict] = {}  # reserved nodes being compiled: their schemas

    def compile(self) -> "_core.JsonSchema":
        self.nodes.append(None)  # the top-level value's node is 0
        self._fill(0, self.root, "schema")
        top = self.nodes[0]
        alternatives = [self.nodes[i] for i in top.any_of] or [top]
        if any(n.literals or n.kinds & ~(KINDS["object"] | KINDS["array"]) for n in alternatives):
            raise SchemaError("the top-level schema must describe an object or an array")
        return _core.JsonSchema(self.nodes)

    def _fill(self, index: int, schema, where: str) -> None:
        """Compiles `schema` into node `index` (reserved)."""
        built = self._build(schema, where)
        if isinstance(built, int):  # any value, or another node: a node that says the same
            built = self._any() if built == _core.JsonSchemaNode.ANY else self._compiled(built,
                                                                                        where)
        self.nodes[index] = built

    def _node(self, schema, where: str) -> int:
        """The node index of `schema`'s values (ANY for any value)."""
        built = self._build(schema, where)
        if isinstance(built, int):
            return built
        if len(self.nodes) >= MAX_NODES:
            raise SchemaError(f"the JSON schema needs more than {MAX_NODES} nodes; simplify it")
        self.nodes.append(built)
        return len(self.nodes) - 1

    def _compiled(self, index: int, where: str) -> "_core.JsonSchemaNode":
        """Node `index`, which must be compiled already (not a $ref still being compiled)."""
        if self.nodes[index] is None:
            raise SchemaError(f"{where} refers to itself before saying what its value is; put "
                              f"the reference inside an object's properties or an array's items")
        return self.nodes[index]

    @staticmethod
    def _any() -> "_core.JsonSchemaNode":
        n = _core.JsonSchemaNode()
        n.additional = _core.JsonSchemaNode.ANY
        return n

    def _build(self, schema, where: str):
        if schema is True:
            return _core.JsonSchemaNode.ANY
        if schema is False:
            raise SchemaError(f"{where} is false: no value is valid")
        if not isinstance(schema, dict):
            raise SchemaError(f"{where} must be a JSON object or a boolean, got "
                              f"{type(schema).__name__}")
        keys = set(schema) - ANNOTATIONS
        unknown = sorted(keys - SUPPORTED)
        if unknown:
            raise SchemaError(f"{where}: the keyword {unknown[0]!r} is not supported (supported: "
                              f"{', '.join(sorted(SUPPORTED))}); remove it")
        if "$ref" in keys:
            if keys != {"$ref"}:
                raise SchemaError(f"{where}: $ref beside other keywords is not supported")
            return self._ref(schema["$ref"], where)
        union = [k for k in ("anyOf", "oneOf") if k in keys]
        if union:
            if keys != {union[0]}:
                raise SchemaError(f"{where}: {union[0]} beside other keywords is not supported; "
                                  f"move them into each alternative")
            return self._union(schema[union[0]], f"{where}.{union[0]}")
        if not keys:
            return _core.JsonSchemaNode.ANY
        n = _core.JsonSchemaNode()
        n.kinds = self._kinds(schema, keys, where)
        if "enum" in keys or "const" in keys:
            return self._literals(n, schema, where)
        if n.kinds & KINDS["object"]:
            self._object(n, schema, where)
        if n.kinds & KINDS["array"]:
            self._array(n, schema, where)
        if n.kinds & KINDS["string"]:
            n.min_length, n.max_length = self._bounds(schema, "minLength", "maxLength", where)
        if keys & set(BOUNDS):
            self._integer_bounds(n, schema, where)
        return n

    @staticmethod
    def _integer_bounds(n, schema: dict, where: str) -> None:
        if n.kinds & KINDS["number"] or not n.kinds & KINDS["integer"]:
            raise SchemaError(f"{where}: minimum and maximum are supported on type integer only "
                              f"(not on number); make it an integer or remove them")
        limit = _core.JsonSchemaNode.MAX_BOUND
        lo, hi = -limit, limit
        for key in BOUNDS:
            value = schema.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise SchemaError(f"{where}.{key} must be a number")
            if abs(value) >= limit:
                raise SchemaError(f"{where}.{key} is {value}; bounds must lie within +-2^62")
            if key == "minimum":
                lo = max(lo, math.ceil(value))
            elif key == "exclusiveMinimum":
                lo = max(lo, math.floor(value) + 1)
            elif key == "maximum":
                hi = min(hi, math.floor(value))
            else:
                hi = min(hi, math.ceil(value) - 1)
        if lo > hi:
            raise SchemaError(f"{where}: no integer lies between its bounds ({lo} to {hi})")
        n.minimum, n.maximum = lo, hi

    def _kinds(self, schema: dict, keys: set, where: str) -> int:
        if "type" not in keys:
            kinds = ((KINDS["object"] if keys & set(OBJECT_KEYWORDS) else 0)
                     | (KINDS["array"] if keys & set(ARRAY_KEYWORDS) else 0)
                     | (KINDS["string"] if keys & set(STRING_KEYWORDS) else 0))
            return kinds or ALL_KINDS
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        kinds = 0
        for name in names:
            if name not in KINDS:
                raise SchemaError(f"{where}: type {name!r} is not one of {', '.join(KINDS)}")
            kinds |= KINDS[name]
        if not kinds:
            raise SchemaError(f"{where}: type is an empty list")
        return kinds

    def _literals(self, n, schema: dict, where: str):
        if "const" in schema:
            values = [schema["const"]]
        elif isinstance(schema["enum"], list) and schema["enum"]:
            values = schema["enum"]
        else:
            raise SchemaError(f"{where}: enum must be a non-empty list")
        if "enum" in schema and "const" in schema:
            raise SchemaError(f"{where}: give enum or const, not both")
        texts = {literal(v) for v in values if _kind_of(v) & n.kinds}
        if not texts:
            raise SchemaError(f"{where}: no value of enum or const is of its type")
        n.literals = sorted(texts, key=lambda t: t.encode())
        return n

    def _object(self, n, schema: dict, where: str) -> None:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{where}.properties must be an object")
        limit = _core.JsonSchemaNode.MAX_PROPERTIES
        if len(props) > limit:
            raise SchemaError(f"{where}.properties has {len(props)} properties; at most {limit} "
                              f"are supported")
        # Names as JSON writes them between the quotes, sorted as bytes.
        written = {name: json.dumps(name, ensure_ascii=False)[1:-1] for name in props}
        names = sorted(props, key=lambda name: written[name].encode())
        n.names = [written[name] for name in names]
        n.properties = [self._node(props[name], f"{where}.properties.{name}") for name in names]
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{where}.required must be a list of property names")
        missing = sorted(set(required) - set(props))
        if missing:
            raise SchemaError(f"{where}.required names {missing[0]!r}, which properties does not "
                              f"define; define it there")
        n.required = sum(1 << names.index(r) for r in set(required))
        extra = schema.get("additionalProperties", "properties" not in schema)
        if extra is True:
            n.additional = _core.JsonSchemaNode.ANY
        elif extra is False:
            n.additional = _core.JsonSchemaNode.NONE
        else:
            n.additional = self._node(extra, f"{where}.additionalProperties")
        n.min_properties, n.max_properties = self._bounds(schema, "minProperties",
                                                          "maxProperties", where)
        if n.additional == _core.JsonSchemaNode.NONE and n.min_properties > len(props):
            raise SchemaError(f"{where}.minProperties is {n.min_properties} but only "
                              f"{len(props)} properties are allowed")
        if 0 <= n.max_properties < len(set(required)):
            raise SchemaError(f"{where}.maxProperties is {n.max_properties} but "
                              f"{len(set(required))} properties are required")

    def _array(self, n, schema: dict, where: str) -> None:
        items = schema.get("items", True)
        if isinstance(items, list):
            raise SchemaError(f"{where}.items as a list (tuple items) is not supported; give one "
                              f"schema for every item")
        n.items = self._node(items, f"{where}.items")
        n.min_items, n.max_items = self._bounds(schema, "minItems", "maxItems", where)

    @staticmethod
    def _bounds(schema: dict, low: str, high: str, where: str) -> tuple[int, int]:
        """(schema[low] or 0, schema[high] or -1), checked."""
        for key in (low, high):
            value = schema.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0 or value >= 2 ** 31):
                raise SchemaError(f"{where}.{key} must be a non-negative integer below 2^31")
        lo, hi = schema.get(low, 0), schema.get(high, -1)
        if hi != -1 and hi < lo:
            raise SchemaError(f"{where}: {high} {hi} is below {low} {lo}")
        return lo, hi

    def _union(self, alternatives, where: str):
        if not isinstance(alternatives, list) or not alternatives:
            raise SchemaError(f"{where} must be a non-empty list of schemas")
        nodes = []
        for i, alt in enumerate(alternatives):
            built = self._node(alt, f"{where}[{i}]")
            if built == _core.JsonSchemaNode.ANY:
                raise SchemaError(f"{where}[{i}] allows any value, so the alternatives cannot "
                                  f"be told apart; drop the union or that alternative")
            if self.nodes[built] is None and {"anyOf", "oneOf"} & set(self.pending[built]):
                raise SchemaError(f"{where}[{i}] is a union that contains itself; give its "
                                  f"alternatives here instead")
            inner = self.nodes[built].any_of if self.nodes[built] is not None else []
            nodes += list(inner) if inner else [built]
        if len(nodes) == 1:
            return nodes[0]
        firsts = [self._first(i) for i in nodes]
        for a in range(len(nodes)):
            for b in range(a + 1, len(nodes)):
                common = firsts[a] & firsts[b]
                if common:
                    raise SchemaError(
                        f"{where}: two alternatives can both begin with {min(common)!r}; kiln "
                        f"tells alternatives apart by their first character (an object or null, "
                        f"a string or a number)")
        n = _core.JsonSchemaNode()
        n.any_of = nodes
        return n

    def _first(self, index: int) -> set[str]:
        """The characters a value of node `index` may begin with (a node still being compiled:
        read off its schema)."""
        n = self.nodes[index]
        if n is None:
            schema = self.pending[index]
            if "enum" in schema or "const" in schema:
                n = self._literals(_core.JsonSchemaNode(), schema, "an alternative")
            else:
                n = _core.JsonSchemaNode()
                n.kinds = self._kinds(schema, set(schema) - ANNOTATIONS, "an alternative")
        if n.literals:
            return {t[0] for t in n.literals}
        return {c for kind, chars in _FIRST.items() if n.kinds & kind for c in chars}

    def _ref(self, ref, where: str, chain: tuple = ()):
        if ref in chain:
            raise SchemaError(f"{where}: $ref {ref!r} refers to itself through "
                              f"{' -> '.join(chain)}; it never says what its value is")
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"{where}: $ref {ref!r} is not supported; only references within "
                              f"the schema (#, #/$defs/...) are")
        if ref in self.refs:
            return self.refs[ref]
        target = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"{where}: $ref {ref!r} points at nothing in the schema")
            target = target[part]
        if ref == "#":
            self.refs[ref] = 0
            return 0
        if isinstance(target, dict) and set(target) - ANNOTATIONS == {"$ref"}:
            return self._ref(target["$ref"], ref, chain + (ref,))  # a reference to a reference
        index = len(self.nodes)
        self.nodes.append(None)
        self.refs[ref] = index
        self.pending[index] = target if isinstance(target, dict) else {}
        self._fill(index, target, ref)
        del self.pending[index]
        return index
