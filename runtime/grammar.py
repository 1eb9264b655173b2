"""Context-free grammars for structured output (vLLM's guided_grammar, TensorRT-LLM's guided
decoding "ebnf_grammar"): compile_grammar turns EBNF text, in the GBNF dialect that xgrammar
and llama.cpp read, into a `_core.Grammar` over UTF-8 bytes that the executor walks token by
token, so the whole output is a sentence of the grammar's `root` rule.

    root   ::= answer ("," ws answer)*
    answer ::= "yes" | "no" | [0-9]+   # a comment
    ws     ::= [ \\t\\n]*

What is supported: rules `name ::= body` (a body runs on over lines up to the next
`name ::=`); string literals in double or single quotes; classes `[...]` and `[^...]` of
characters and ranges (any code points); `.` (any character); rule references (in any
order, recursion included but for left recursion); groups `(...)`; alternation `|`;
quantifiers `* + ? {n} {n,} {n,m}`; escapes `\\n \\t \\r \\\\ \\" \\' \\xHH \\uHHHH
\\UHHHHHHHH` and escaped punctuation; comments from `#` to the line's end. Alternatives that
can never finish are dropped, so every prefix the executor allows can still end in a sentence.
Refused with one line saying where: left recursion (`expr ::= expr "+" term`: write
`expr ::= term ("+" term)*`), undefined rules, no `root`, and grammars past MAX_ITEMS items.
"""
from __future__ import annotations

import collections
import threading

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.regex import (MAX_CODEPOINT, MAX_REPEAT, CharSet, repeat_bounds, repeat_fits,
                                utf8_sequences)

MAX_ITEMS = 200_000
CACHED = 64
ROOT = "root"
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0", "a": "\a",
            "b": "\b", "e": "\x1b"}
_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _NAME_START | set("0123456789-")


class GrammarError(KilnError, ValueError):
    """A grammar compile_grammar cannot enforce; its text is one line."""


class _Rules:
    """The rules being built: per rule its alternatives, each a list of items (a byte set's
    index, or ~r for rule r); rules made for groups and quantifiers name the rule they are in."""

    def __init__(self) -> None:
        self.alternatives: list[list[list[int]] | None] = []  # None: named, not defined yet
        self.names: list[str] = []
        self.loops: set[int] = set()  # rules made for * and + and {n,}
        self.by_name: dict[str, int] = {}
        self.first_use: dict[str, int] = {}  # where each name is first referred to
        self.sets: dict[bytes, int] = {}
        self.items = 0

    def named(self, name: str) -> int:
        if name not in self.by_name:
            self.by_name[name] = len(self.names)
            self.names.append(name)
            self.alternatives.append(None)
        return self.by_name[name]

    def made(self, owner: str, alternatives: list[list[int]]) -> int:
        self.names.append(owner)
        self.alternatives.append(alternatives)
        self.count(alternatives)
        return len(self.names) - 1

    def count(self, alternatives: list[list[int]]) -> None:
        self.items += sum(len(a) + 1 for a in alternatives)
        if self.items > MAX_ITEMS:
            raise GrammarError(f"the grammar needs more than {MAX_ITEMS} items; shorten its "
                               "counted repetitions")

    def byte_set(self, lo: int, hi: int, extra=()) -> int:
        bits = bytearray(32)
        for b in [*range(lo, hi + 1), *extra]:
            bits[b // 8] |= 1 << (b % 8)
        return self.sets.setdefault(bytes(bits), len(self.sets))

    def chars(self, owner: str, s: CharSet) -> list[int]:
        """The items of one character of s: a byte set where s is ASCII, else a rule with an
        alternative per UTF-8 byte-range sequence."""
        ascii_set = sorted(s.ascii)
        if not s.ranges:
            if not ascii_set:
                return [~self.empty_language(owner)]
            return [self.byte_set(1, 0, ascii_set)]
        alternatives = [[self.byte_set(1, 0, ascii_set)]] if ascii_set else []
        for lo, hi in s.ranges:
            for seq in utf8_sequences(lo, hi):
                alternatives.append([self.byte_set(a, b) for a, b in seq])
        return [~self.made(owner, alternatives)]

    def empty_language(self, owner: str) -> int:
        """A rule with no sentence (dropped with what refers to it)."""
        return self.made(owner, [[~len(self.names)]])


class _Parser:
    """Recursive descent over the grammar's text into _Rules."""

    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0
        self.rules = _Rules()
        self.rule = ""  # the rule being read

    def fail(self, what: str, at: int | None = None):
        at = self.i if at is None else at
        line = self.t.count("\n", 0, at) + 1
        col = at - (self.t.rfind("\n", 0, at) + 1) + 1
        raise GrammarError(f"the grammar at line {line}, column {col}: {what}")

    def space(self) -> None:
        while self.i < len(self.t):
            c = self.t[self.i]
            if c == "#":
                end = self.t.find("\n", self.i)
                self.i = len(self.t) if end < 0 else end
            elif c in " \t\r\n":
                self.i += 1
            else:
                break

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def name(self) -> str:
        start = self.i
        while self.i < len(self.t) and self.t[self.i] in _NAME:
            self.i += 1
        return self.t[start:self.i]

    def rule_starts(self) -> bool:
        """Whether `name ::=` begins at i (the body before it has ended)."""
        at = self.i
        if self.peek() not in _NAME_START:
            return False
        self.name()
        self.space()
        starts = self.t.startswith("::=", self.i)
        self.i = at
        return starts

    def parse(self) -> _Rules:
        self.space()
        if self.i == len(self.t):
            self.fail("no rules; write at least root ::= ...")
        while self.i < len(self.t):
            at = self.i
            if self.peek() not in _NAME_START:
                self.fail("a rule name (letters, digits, '_' or '-') must begin a rule")
            self.rule = self.name()
            self.space()
            if not self.t.startswith("::=", self.i):
                self.fail(f"'::=' must follow the rule name {self.rule!r}")
            self.i += 3
            r = self.rules.named(self.rule)
            if self.rules.alternatives[r] is not None:
                self.fail(f"rule {self.rule!r} is defined twice", at)
            alternatives = self.alternatives()
            self.rules.alternatives[r] = alternatives
            self.rules.count(alternatives)
            if self.peek() == ")":
                self.fail("an unmatched ')'")
        return self.rules

    def alternatives(self) -> list[list[int]]:
        out = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            out.append(self.sequence())
        return out

    def sequence(self) -> list[int]:
        items: list[int] = []
        self.space()
        while self.peek() not in (None, "|", ")") and not self.rule_starts():
            items += self.quantified(self.atom())
            self.space()
        return items

    def atom(self) -> list[int]:
        at, c = self.i, self.t[self.i]
        self.i += 1
        if c in "\"'":
            return [self.rules.byte_set(b, b) for b in self.literal(c).encode()]
        if c == "[":
            return self.rules.chars(self.rule, self.char_class())
        if c == ".":
            return self.rules.chars(self.rule, CharSet.span(0, MAX_CODEPOINT))
        if c == "(":
            if self.peek() == "=":
                self.fail("lookahead assertions (= ...) are not supported")
            alternatives = self.alternatives()
            if self.peek() != ")":
                self.fail("a missing ')'")
            self.i += 1
            if len(alternatives) == 1:
                return alternatives[0]
            return [~self.rules.made(self.rule, alternatives)]
        if c in _NAME_START:
            self.i = at
            name = self.name()
            self.rules.first_use.setdefault(name, at)
            return [~self.rules.named(name)]
        if c in "*+?{":
            self.fail(f"nothing to repeat before {c!r}", at)
        self.fail(f"unexpected {c!r}; expected a string, a class, a rule name or '('", at)

    def quantified(self, items: list[int]) -> list[int]:
        while True:
            self.space()
            c = self.peek()
            if c is None or c not in "*+?{":
                return items
            self.i += 1
            if c == "{":
                lo, hi = self.counted()
            else:
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            items = self.repeated(items, lo, hi)

    def counted(self) -> tuple[int, int | None]:
        end = self.t.find("}", self.i)
        body = self.t[self.i: end] if end >= 0 else ""
        bounds = repeat_bounds(",".join(p.strip() for p in body.split(","))) if end >= 0 else None
        if bounds is None:
            self.fail("a repetition is {n}, {n,} or {n,m} with whole numbers")
        if not repeat_fits(*bounds):
            self.fail(f"repetition {{{body}}} must have min <= max <= {MAX_REPEAT}")
        self.i = end + 1
        return bounds

    def repeated(self, items: list[int], lo: int, hi: int | None) -> list[int]:
        """items lo times, then up to hi - lo times more (any number with hi None), as rules:
        R ::= items R | "" for a loop, O_k ::= items O_k-1 | "" for the optional copies."""
        if not items:
            return items
        out = items * lo
        self.rules.count([out])
        if hi is None:
            r = len(self.rules.names)
            self.rules.loops.add(r)
            return out + [~self.rules.made(self.rule, [items + [~r], []])]
        tail: list[int] = []
        for _ in range(hi - lo):
            tail = [~self.rules.made(self.rule, [items + tail, []])]
        return out + tail

    def literal(self, quote: str) -> str:
        out = []
        while True:
            if self.i >= len(self.t) or self.t[self.i] == "\n":
                self.fail("an unterminated string")
            c = self.t[self.i]
            self.i += 1
            if c == quote:
                return "".join(out)
            out.append(self.escape() if c == "\\" else c)

    def escape(self) -> str:
        if self.i >= len(self.t):
            self.fail("a trailing backslash")
        c = self.t[self.i]
        self.i += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.t[self.i: self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"\\{c} needs {n} hex digits")
            self.i += n
            if int(digits, 16) > MAX_CODEPOINT or 0xD800 <= int(digits, 16) <= 0xDFFF:
                self.fail(f"\\{c}{digits} is not a character")
            return chr(int(digits, 16))
        if c.isalnum():
            self.fail(f"\\{c} is not an escape the grammar knows")
        return c

    def char_class(self) -> CharSet:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        out = CharSet()
        while True:
            if self.i >= len(self.t):
                self.fail("an unterminated '['")
            c = self.t[self.i]
            self.i += 1
            if c == "]":
                break
            lo = self.escape() if c == "\\" else c
            hi = lo
            if self.peek() == "-" and self.i + 1 < len(self.t) and self.t[self.i + 1] != "]":
                self.i += 1
                c2 = self.t[self.i]
                self.i += 1
                hi = self.escape() if c2 == "\\" else c2
                if hi < lo:
                    self.fail(f"a bad range {lo!r}-{hi!r}")
            out = out.union(CharSet.span(ord(lo), ord(hi)))
        return out.negate() if negated else out


def _finished(rules: _Rules) -> list[list[list[int]]]:
    """The rules reachable from root, root first, with the alternatives that can never finish
    dropped (those that need a rule with no finite sentence), renumbered; refuses a root
    without one and left recursion, naming the rule."""
    alts = rules.alternatives
    productive = [False] * len(alts)
    changed = True
    while changed:
        changed = False
        for r, alternatives in enumerate(alts):
            if not productive[r] and any(all(i >= 0 or productive[~i] for i in a)
                                         for a in alternatives):
                productive[r] = changed = True
    root = rules.by_name[ROOT]
    if not productive[root]:
        raise GrammarError("the grammar has no finite sentence: every alternative of root needs "
                           "a rule that never ends")
    kept = [[a for a in alternatives if all(i >= 0 or productive[~i] for i in a)]
            for alternatives in alts]
    order, index = [root], {root: 0}
    for r in order:
        for a in kept[r]:
            for i in a:
                if i < 0 and ~i not in index:
                    index[~i] = len(order)
                    order.append(~i)
    out = [[[i if i >= 0 else ~index[~i] for i in a] for a in kept[r]] for r in order]
    # A rule that can begin with itself would make a parse grow without reading a byte.
    looping = _core.Grammar.left_recursive(out)
    if looping >= 0:
        name = rules.names[order[looping]]
        if order[looping] in rules.loops:
            raise GrammarError(f"rule {name!r} repeats something that can be empty (such as "
                               "(\"a\"?)*); write the repetition of what cannot be empty, e.g. "
                               "(\"a\")*")
        raise GrammarError(f"rule {name!r} is left-recursive (it can begin with itself); write "
                           f"the repetition with '*', e.g. {name} ::= item (\"+\" item)*")
    return out


_cache: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()


def compile_grammar(text: str) -> "_core.Grammar":
    """The grammar of `text` (EBNF, its start rule `root`) over UTF-8 bytes, shared by the
    requests that use it (the last CACHED grammars are kept). Raises GrammarError saying what
    is wrong and where."""
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("the grammar must be a non-empty string of rules, e.g. root ::= \"yes\" "
                           "| \"no\"")
    with _lock:
        if text in _cache:
            _cache.move_to_end(text)
            return _cache[text]
    rules = _Parser(text).parse()
    for name, r in rules.by_name.items():
        if rules.alternatives[r] is None:
            at = rules.first_use[name]
            _Parser(text).fail(f"rule {name!r} is used but never defined", at)
    if ROOT not in rules.by_name:
        raise GrammarError("the grammar has no root rule; the output is a sentence of "
                           "root ::= ...")
    sets = sorted(rules.sets, key=rules.sets.get)
    compiled = _core.Grammar(_finished(rules), sets)
    with _lock:
        _cache[text] = compiled
        while len(_cache) > CACHED:
            _cache.popitem(last=False)
    return compiled
