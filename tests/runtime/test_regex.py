r"""Regex-guided output: compile_regex's automaton accepts exactly what Python's re.fullmatch
matches (re.ASCII: \d \w \s are ASCII classes), on texts chosen by hand and on random walks
over the automaton; generation under a regex is HF's greedy pick among the tokens that keep a
match reachable, and matches."""
from __future__ import annotations

import random
import re

import pytest
import torch

from kiln import _core
from kiln.runtime.regex import MAX_STATES, RegexError, compile_regex

CASES = [
    (r"\d{3}-\d{4}", ["555-1234", "000-0000"], ["5551234", "555-12345", "55-1234", ""]),
    (r"(yes|no|maybe)", ["yes", "no", "maybe"], ["ye", "yesno", "Yes"]),
    (r"[A-Z][a-z]+( [A-Z][a-z]+)*", ["Ada", "Ada Love Lace"], ["ada", "Ada ", "A"]),
    (r"é+ü?", ["é", "ééü"], ["ü", "éüü", "e"]),
    (r".{2,4}x", ["abx", "a\u00e9\u4e2dx", "\U0001f600\U0001f600x"], ["ax", "abcdex", "a\nbx"]),
    (r"[^a-c]+\.", ["xyz.", "9.", "\u00e9."], ["a.", ".", "xyz"]),
    (r"^(?:ab|a)*b$", ["b", "abab", "aab"], ["", "ba", "abba"]),
    (r"[\w.-]+@[\w-]+\.(?P<tld>com|org)", ["a.b-c@x-y.org"], ["@x.org", "a@x.net"]),
    (r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", ["0", "-12.5e-3", "7E9"], ["01", "1.", "--1"]),
    (r"\s*\{\s*\"k\"\s*:\s*[tf]\w{3,4}\s*\}", ['{"k": true}', ' { "k":false }'], ['{"k": t}', '{"k": true} ']),
    (r"x{2,}?y|\x41\u00e9[\]\-\\]", ["xxy", "xxxxy", "A\u00e9]", "A\u00e9-", "A\u00e9\\"], ["xy"]),
    (r"[\W\d]{2}", ["!5", "\u00e9 "], ["a5", "5"]),
    (r"[à-üa-c]+", ["àé", "abü", "\u00f0"], ["ý", "d", "à-"]),
    (r"[^é\n]{2}", ["ab", "\u00e8\U0001f600"], ["é", "aé", "a\n"]),
    (r"[α-ω]{2}\.[\u0800-\U00010400]", ["αβ.\u0800", "ωω.\U00010400", "αω.\uffff"],
     ["αβ.\u07ff", "αβ.\U00010401", "ΑΒ.\u0800"]),  # \W as re.ASCII reads it: \u00e9 is not \w
]


def accepts(dfa, text: str) -> bool:
    state = dfa.walk(0, text.encode())
    return state >= 0 and dfa.accepting(state)


@pytest.mark.parametrize("pattern,good,bad", CASES)
def test_the_automaton_accepts_what_re_matches(pattern, good, bad):
    dfa = compile_regex(pattern)
    for text in good + bad:
        assert accepts(dfa, text) == bool(re.fullmatch(pattern, text, re.ASCII)), text
    assert all(accepts(dfa, t) for t in good) and not any(accepts(dfa, t) for t in bad)


@pytest.mark.parametrize("pattern", [c[0] for c in CASES])
def test_every_walk_the_automaton_allows_matches(pattern):
    """Random walks over the bytes the automaton allows (no walk may reach a dead end; a byte
    that ends a match is favoured), each stopped at an accepting state: valid UTF-8 that
    re.fullmatch matches."""
    dfa, rng = compile_regex(pattern), random.Random(7)
    walks = 0
    for _ in range(300):
        state, text = 0, b""
        while len(text) < 80:
            if dfa.accepting(state) and (dfa.closed(state) or rng.random() < 0.3):
                walks += 1
                assert re.fullmatch(pattern, text.decode(), re.ASCII), text
                break
            allowed = [b for b in range(256) if dfa.walk(state, bytes([b])) >= 0]
            assert allowed, text
            ending = [b for b in allowed if dfa.accepting(dfa.walk(state, bytes([b])))]
            b = rng.choice(ending if ending and rng.random() < 0.3 else allowed)
            text += bytes([b])
            state = dfa.walk(state, bytes([b]))
    assert walks >= 50


@pytest.mark.parametrize("pattern,fragment", [
    (r"(a)\1", r"\1 is not supported"),
    (r"a(?=b)", "lookarounds"),
    (r"\bword", r"\b is not supported"),
    (r"(?i)abc", "inline flags"),
    (r"a++", "possessive"),
    (r"(a|b)*a(a|b){14}", f"more than {MAX_STATES} automaton states"),
    (r"a{5,2}", "min <= max"),
    (r"(ab", "a missing ')'"),
    (r"ab)", "an unmatched ')'"),
    (r"*a", "nothing to repeat"),
    (r"a^b", "'^' is supported only at the start"),
    (r"[ab", "an unterminated '['"),
    ("", "non-empty string"),
])
def test_compile_refuses_what_it_cannot_enforce(pattern, fragment):
    with pytest.raises(RegexError) as e:
        compile_regex(pattern)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def hf_guided_greedy(model, guide, table, prompt: list[int], n: int, end_id: int):
    """HF's greedy pick among the tokens that keep a regex matchable or a grammar's sentence
    reachable (`guide`, a RegexDfa or a Grammar; end_id where the text is whole), until nothing
    may follow, end_id, or n tokens."""
    regex = isinstance(guide, _core.RegexDfa)
    state, out = (0 if regex else guide.start()), []
    while len(out) < n:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out])).logits[0, -1]
        allowed = torch.zeros(logits.numel(), dtype=torch.bool)
        allowed[guide.tokens(state, table, logits.numel())] = True
        if guide.accepting(state):
            allowed[end_id] = True
        pick = int(torch.where(allowed, logits, -torch.inf).argmax())
        out.append(pick)
        if pick == end_id:
            break
        state = (guide.walk if regex else guide.advance)(state, table[pick])
        if guide.closed(state):
            break
    return out


def guided_run(model, runner, guide, **guided):
    """(the runner's tokens after "The answer is" under `guided` (regex= or grammar=), HF's
    greedy pick under the compiled `guide`, the runner's text, its finish reason), 24 tokens
    at most."""
    tok = runner.tokenizer
    prompt = tok.encode("The answer is")
    want = hf_guided_greedy(model, guide, tok.token_table(runner.vocab_size), prompt, 24,
                            tok.eos_id)
    out = runner.generate([prompt], max_new_tokens=24, return_dict=True, **guided)
    got = out["output_ids"][0, 0, len(prompt): out["sequence_lengths"][0, 0]].tolist()
    return got, want, tok.decode([t for t in got if t != tok.eos_id]), out["finish_reasons"][0]


@pytest.mark.parametrize("pattern", [r"(red|green|blue) [0-9]{2}", r"[a-z ]{3,12}\.",
                                     r"\{\"n\": -?\d{1,3}\}"])
def test_regex_generation_equals_huggingface(hf_and_runner, pattern):
    model, runner = hf_and_runner
    got, want, text, finish = guided_run(model, runner, compile_regex(pattern), regex=pattern)
    assert got == want
    if finish != "length":
        assert re.fullmatch(pattern, text, re.ASCII), text
    with pytest.raises(Exception, match="regex and json_object do not combine"):
        runner.generate([runner.tokenizer.encode("The answer is")], max_new_tokens=4,
                        regex=pattern, json_object=True)


def test_tokens_kept_for_a_state_answer_each_vocabulary_size():
    """A state's tokens are kept for the whole table; a caller with a smaller vocabulary gets
    those below it, whichever size asked first."""
    table = _core.TokenTable([b"a", b"b", b"ab", b"c", b"aa", b"", b"ba"])
    dfa = compile_regex(r"[ab]+c?")
    assert dfa.tokens(0, table, 3) == [0, 1, 2]
    assert dfa.tokens(0, table, 7) == [0, 1, 2, 4, 6]
    assert dfa.tokens(0, table, 3) == [0, 1, 2]
