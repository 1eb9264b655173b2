r"""Grammar-guided output: compile_grammar's grammar accepts exactly what an independent check
accepts (re.fullmatch for regular grammars, json.loads, hand-written recognizers for the
others), on texts chosen by hand and on random walks over the bytes it allows; the tokens it
allows from a state are those whose bytes continue a sentence; generation under a grammar is
HF's greedy pick among those tokens, and is a sentence."""
from __future__ import annotations

import json
import random
import re

import pytest
import torch

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.grammar import MAX_ITEMS, GrammarError, compile_grammar
from test_regex import guided_run


def balanced(text: str) -> bool:
    depth = 0
    for c in text:
        depth += 1 if c == "(" else -1
        if depth < 0 or c not in "()":
            return False
    return depth == 0


def arithmetic(text: str) -> bool:
    """expr ::= term (("+" | "-") term)*, term ::= factor (("*" | "/") factor)*,
    factor ::= digits | "(" expr ")", by recursive descent."""
    i = 0

    def factor() -> bool:
        nonlocal i
        if i < len(text) and text[i] == "(":
            i += 1
            if not expr() or i >= len(text) or text[i] != ")":
                return False
            i += 1
            return True
        start = i
        while i < len(text) and text[i].isdigit():
            i += 1
        return i > start

    def chain(part, ops: str) -> bool:
        nonlocal i
        if not part():
            return False
        while i < len(text) and text[i] in ops:
            i += 1
            if not part():
                return False
        return True

    def term() -> bool:
        return chain(factor, "*/")

    def expr() -> bool:
        return chain(term, "+-")

    return text.isascii() and expr() and i == len(text)


def json_value(text: str) -> bool:
    """One JSON value, no whitespace around it but space, tab and newline inside."""
    if not text or text != text.strip(" \t\n") or "\r" in text:
        return False
    try:
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return False
    return True


JSON = r"""
root   ::= value
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= [ \t\n]*
"""

ARITHMETIC = """
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
"""


def regular(pattern: str):
    return lambda text: re.fullmatch(pattern, text, re.DOTALL) is not None


CASES = [
    ('root ::= "yes" | "no"', regular("yes|no"), ["yes", "no"], ["", "ye", "yesno", "Yes"]),
    ("root ::= answer (\",\" ws answer)*\nanswer ::= \"yes\" | \"no\" | [0-9]+  # a comment\n"
     "ws ::= [ \\t\\n]*", regular(r"(yes|no|[0-9]+)(,[ \t\n]*(yes|no|[0-9]+))*"),
     ["yes", "yes, 12", "7,\n no,yes"], ["yes,", ", no", "yes ,no"]),
    ('root ::= "" | "(" root ")" root', balanced, ["", "()", "(())()", "((()()))"],
     ["(", ")(", "(()", "())"]),
    (ARITHMETIC, arithmetic, ["1", "12+3*(4-5)/6", "((7))"], ["", "1+", "(1", "1**2", "-1"]),
    (JSON, json_value, ['{"a": [1, -2.5e3, true, null], "b\\u00e9": {}}', "[]", '"\u00e9\\n"',
                        "0"], ["{", "01", '{"a" 1}', "[1,]", " 1", "NaN", '"\x01"']),
    ("root ::= [α-ω]+ \"!\" | 'é'{2,3}\n", regular("[α-ω]+!|é{2,3}"),
     ["αβ!", "ω!", "éé", "ééé"], ["!", "αΒ!", "é", "éééé"]),
    ('root ::= ( [^a-c\\n] . ){1,2} "\\x41\\u00e9\\U0001F600" [\\]\\-]?',
     regular("([^a-c\n].){1,2}A\u00e9\U0001f600[\\]\\-]?", ),
     ["d\nA\u00e9\U0001f600", "xyzzA\u00e9\U0001f600]", "\u4e2d\u00e9A\u00e9\U0001f600-"],
     ["aaA\u00e9\U0001f600", "A\u00e9\U0001f600", "\nxA\u00e9\U0001f600"]),
    ("root ::= item+\nitem ::=\n    \"a\"\n  | \"b\" item?\n", regular("(a|b+a?|b)+"),
     ["a", "bba", "abab"], ["", "c"]),
]


def accepts(grammar, text: str) -> bool:
    return grammar.accepting(grammar.advance(grammar.start(), text.encode()))


@pytest.mark.parametrize("text,check,good,bad", CASES)
def test_the_grammar_accepts_what_the_check_accepts(text, check, good, bad):
    grammar = compile_grammar(text)
    for sample in good + bad:
        assert accepts(grammar, sample) == check(sample), sample
    assert all(accepts(grammar, s) for s in good) and not any(accepts(grammar, s) for s in bad)


@pytest.mark.parametrize("text,check", [c[:2] for c in CASES])
def test_every_walk_the_grammar_allows_is_a_sentence(text, check):
    """Random walks over the bytes the grammar allows (none may reach a dead end; a byte that
    ends a sentence is favoured), each stopped at an accepting state: valid UTF-8 that the
    independent check accepts."""
    grammar, rng = compile_grammar(text), random.Random(7)
    walks = 0
    for _ in range(150):
        state, out = grammar.start(), b""
        while len(out) < 60:
            if grammar.accepting(state) and (grammar.closed(state) or rng.random() < 0.3):
                walks += 1
                assert check(out.decode()), out
                break
            allowed = [b for b in range(256) if grammar.advance(state, bytes([b]))]
            assert allowed, out
            ending = [b for b in allowed if grammar.accepting(grammar.advance(state, bytes([b])))]
            b = rng.choice(ending if ending and rng.random() < 0.3 else allowed)
            out += bytes([b])
            state = grammar.advance(state, bytes([b]))
    assert walks >= 40


def test_tokens_are_those_whose_bytes_continue_a_sentence():
    """Grammar.tokens (a walk over the vocabulary in byte order, skipping what begins with a
    dead prefix) equals advancing each token's bytes on its own, along a walk through a JSON
    value; a token id past vocab_size and an empty entry are never allowed."""
    rng = random.Random(3)
    pieces = ['{"', '":', '", "', "true", "tr", "null", "nul", "12", "-0", ".5", "e+", "[]", "[{",
              "}]", "\\u00", "\\n", "é", "\u4e2d\u6587", " ", "\n ", "ab", "a", "\\"]
    vocab = [bytes([b]) for b in range(256)] + [p.encode() for p in pieces]
    vocab += ["".join(rng.choice(pieces) for _ in range(3)).encode() for _ in range(300)]
    vocab += [b"", "é".encode()[:1]]
    table = _core.TokenTable(vocab)
    grammar = compile_grammar(JSON)
    state = grammar.start()
    for piece in ['{"', "k", 'é":', " [", "1", ".5e+", "2, ", "tr", "ue]", "}"]:
        want = [t for t, b in enumerate(vocab) if b and grammar.advance(state, b)]
        assert grammar.tokens(state, table, len(vocab)) == want, piece
        assert grammar.tokens(state, table, len(vocab)) == want  # kept
        assert grammar.tokens(state, table, 300) == [t for t in want if t < 300]
        state = grammar.advance(state, piece.encode())
        assert state, piece
    assert grammar.closed(state) and grammar.tokens(state, table, len(vocab)) == []


def test_alternatives_that_never_finish_are_dropped():
    grammar = compile_grammar('root ::= "a" | "b" loop | "c" [^\\x00-\\U0010FFFF]\n'
                              'loop ::= "x" loop')
    start = grammar.start()
    assert grammar.advance(start, b"a") and not grammar.advance(start, b"b")
    assert not grammar.advance(start, b"c")
    assert grammar.closed(grammar.advance(start, b"a"))


def test_a_grammar_ambiguous_past_the_limit_fails_where_it_gets_there():
    grammar = compile_grammar('root ::= "x" root "y" | "x" root "z" | ""')
    state = grammar.advance(grammar.start(), b"x" * 8)
    # Each open "x" waits for a "y" or a "z": 2^8 ways, each with three tops (two next "x"s,
    # or the innermost root empty).
    assert len(state) == 3 * 2 ** 8 and not grammar.accepting(state)
    assert grammar.accepting(grammar.advance(state, b"yzyyyzzy"))
    with pytest.raises(RuntimeError, match="the grammar is ambiguous past 1024 parses at once"):
        grammar.advance(state, b"x")


@pytest.mark.parametrize("text,fragment", [
    ('root ::= root "a" | "b"', "rule 'root' is left-recursive (it can begin with itself)"),
    ('root ::= e\ne ::= t | e "+" t\nt ::= "1"', "rule 'e' is left-recursive"),
    ('root ::= ("a"?)* "b"', "rule 'root' repeats something that can be empty"),
    ('root ::= "a" b', "line 1, column 14: rule 'b' is used but never defined"),
    ('start ::= "a"', "the grammar has no root rule"),
    ('root ::= "a"\nroot ::= "b"', "line 2, column 1: rule 'root' is defined twice"),
    ('root ::= "a', "line 1, column 12: an unterminated string"),
    ('root ::= [a-', "an unterminated '['"),
    ('root ::= [z-a]', "a bad range 'z'-'a'"),
    ('root ::= "a"{3,1}', "repetition {3,1} must have min <= max <= 1000"),
    ('root ::= "a"{x}', "a repetition is {n}, {n,} or {n,m}"),
    ('root ::= ("a"', "a missing ')'"),
    ('root ::= "a")', "an unmatched ')'"),
    ('root ::= * "a"', "nothing to repeat before '*'"),
    ('root ::= "a" (= "b")', "lookahead assertions (= ...) are not supported"),
    ('root ::= "\\q"', "\\q is not an escape the grammar knows"),
    ('root = "a"', "'::=' must follow the rule name 'root'"),
    ('root ::= loop\nloop ::= "x" loop', "the grammar has no finite sentence"),
    ('root ::= "a" @', "unexpected '@'"),
    ("   # only a comment\n", "line 2, column 1: no rules; write at least root ::= ..."),
    ("", "the grammar must be a non-empty string of rules"),
    ('root ::= (("ab"{1000}){1000})', f"more than {MAX_ITEMS} items"),
])
def test_compile_refuses_what_it_cannot_enforce(text, fragment):
    with pytest.raises(GrammarError) as e:
        compile_grammar(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_extension_refuses_a_malformed_grammar():
    with pytest.raises(KilnError, match="grammar rule 0 is left-recursive"):
        _core.Grammar([[[~0, 0]], [[0]]], [bytes(32)])
    with pytest.raises(KilnError, match="refers to no byte set or rule"):
        _core.Grammar([[[3]]], [bytes(32)])
    with pytest.raises(KilnError, match="byte set is 32 bytes"):
        _core.Grammar([[[0]]], [bytes(8)])


@pytest.mark.parametrize("text,check", [
    (ARITHMETIC, arithmetic),
    ('root ::= ("yes" | "no" | "maybe") " " [!?]', regular(r"(yes|no|maybe) [!?]")),
    ('root ::= ("red" | "green") " " [0-9]{2} ("," " "? root)?',
     regular(r"(red|green) [0-9]{2}(, ?(red|green) [0-9]{2})*")),
    (JSON, json_value),
])
def test_grammar_generation_equals_huggingface(hf_and_runner, text, check):
    model, runner = hf_and_runner
    got, want, generated, finish = guided_run(model, runner, compile_grammar(text), grammar=text)
    assert got == want
    if finish != "length" or "yes" in text:
        assert finish == "stop_words" and check(generated), generated
    with pytest.raises(Exception, match="grammar and regex do not combine"):
        runner.generate([runner.tokenizer.encode("The answer is")], max_new_tokens=4,
                        grammar=text, regex="a")


def test_the_executor_keeps_to_the_grammar_and_fails_only_its_too_ambiguous_request():
    """Through the executor (the fake paged model of test_executor): a request under a grammar
    picks the model's favourite among the tokens the grammar allows and stops once nothing may
    follow; one whose grammar passes Grammar.MAX_STACKS parses ends with an error alone."""
    from test_executor import (VOCAB, Executor, FakeBackend, FinishReason, collect, config,
                               expected_greedy, greedy)

    words = ["x", "xxx", "y", "z", "q", ", ", "!", "xy"]
    table = _core.TokenTable([w.encode() for w in words] + [b"\xff"] * (VOCAB - len(words)))
    listing = compile_grammar('root ::= item (", " item)* "!"\nitem ::= "x"+ | "y" | "z"')
    ambiguous = compile_grammar('root ::= "x" root "y" | "x" root "z" | ""')
    only_x = _core.TokenTable([b"x", b"xxx"] + [b"\xff"] * (VOCAB - 2))  # no "y" or "z" to close
    backend = FakeBackend()
    with Executor(config(), backend) as ex:
        ids = ex.enqueue_requests([greedy([5, 6, 7], 6),
                                   greedy([3, 1], 30, grammar=listing, token_table=table),
                                   greedy([3, 1], 30, grammar=ambiguous, token_table=only_x),
                                   greedy([9], 3)])
        done = collect(ex, ids, timeout_s=30)
    assert done[ids[0]].output_token_ids == expected_greedy([5, 6, 7], 6)
    assert done[ids[3]].output_token_ids == expected_greedy([9], 3)
    listed = done[ids[1]]
    text = "".join(words[t] for t in listed.output_token_ids)
    if listed.finish_reason == FinishReason.STOP_WORDS:
        assert re.fullmatch(r"(x+|y|z)(, (x+|y|z))*!", text), text
    else:
        assert listed.finish_reason == FinishReason.LENGTH and len(text) > 0
    assert accepts(listing, text) or listed.finish_reason == FinishReason.LENGTH
    failed = done[ids[2]]
    assert failed.finish_reason == FinishReason.ERROR
    assert failed.error_message.startswith("sampling failed: the grammar is ambiguous past 1024")
