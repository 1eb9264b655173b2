"""Regular expressions for structured output (vLLM's guided_regex, TensorRT-LLM's guided
decoding "regex"): compile_regex turns a pattern into a DFA over UTF-8 bytes
(`_core.RegexDfa`) that the executor walks token by token, so the whole output matches the
pattern (as Python's re.fullmatch reads it with re.ASCII: \\d \\w \\s are ASCII classes, as
in JSON-schema patterns).

What is supported: literals (any Unicode character), `.` (any character but a newline),
classes `[...]` and `[^...]` of characters and ranges (any code points: a range becomes the
UTF-8 byte sequences of its code points), `\\d \\w \\s` and `\\D \\W \\S` (ASCII meanings),
escapes (`\\n \\t \\r \\f \\v \\xHH \\uHHHH \\UHHHHHHHH` and escaped punctuation), groups `(...)`,
`(?:...)` and `(?P<name>...)`, alternation `|`, quantifiers `* + ? {n} {n,} {n,m}` (lazy ones
match the same language), and `^` / `$` at the pattern's ends. Refused with one line naming
it: backreferences, lookarounds, word boundaries, inline flags, possessive quantifiers, and
patterns whose automaton passes MAX_STATES states.
"""
from __future__ import annotations

import collections
import threading

from kiln import _core
from kiln.builder.errors import KilnError

MAX_STATES = 4096
MAX_NFA = 100_000
MAX_REPEAT = 1000
CACHED = 64
_DIGIT = frozenset(range(0x30, 0x3A))
_WORD = frozenset([*range(0x30, 0x3A), *range(0x41, 0x5B), *range(0x61, 0x7B), 0x5F])
_SPACE = frozenset(b" \t\n\r\f\v")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
MAX_CODEPOINT = 0x10FFFF


class RegexError(KilnError, ValueError):
    """A pattern compile_regex cannot enforce; its text is one line."""


class CharSet:
    """A set of characters: ASCII bytes, and code point ranges from U+0080 up (merged)."""

    def __init__(self, ascii_bytes=(), ranges=()) -> None:
        self.ascii = frozenset(ascii_bytes)
        self.ranges = _merged(ranges)

    @classmethod
    def span(cls, lo: int, hi: int) -> "CharSet":
        """The code points lo..hi."""
        return cls(range(lo, min(hi, 127) + 1), [(max(lo, 128), hi)] if hi >= 128 else [])

    def negate(self) -> "CharSet":
        gaps, at = [], 0x80
        for lo, hi in self.ranges:
            if lo > at:
                gaps.append((at, lo - 1))
            at = hi + 1
        if at <= MAX_CODEPOINT:
            gaps.append((at, MAX_CODEPOINT))
        return CharSet(frozenset(range(128)) - self.ascii, gaps)

    def union(self, other: "CharSet") -> "CharSet":
        return CharSet(self.ascii | other.ascii, self.ranges + other.ranges)


def _merged(ranges) -> tuple:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The code points lo..hi (from U+0080 up; surrogates left out) as UTF-8 byte-range
    sequences: each a list of (low, high) byte ranges, one a byte, whose every combination
    is one of the code points and which together take each exactly once."""
    out, stack = [], [(lo, hi)]
    while stack:
        s, e = stack.pop()
        if s > e:
            continue
        if s <= 0xDFFF and e >= 0xD800:  # surrogates encode nothing
            stack += [(s, 0xD7FF), (0xE000, e)]
            continue
        split = next((m for m in (0x7F, 0x7FF, 0xFFFF) if s <= m < e), None)
        if split is not None:  # one encoded length at a time
            stack += [(s, split), (split + 1, e)]
            continue
        for i in (1, 2, 3):  # then ranges whose continuation bytes run full
            m = (1 << (6 * i)) - 1
            if s & ~m != e & ~m:
                if s & m:
                    stack += [(s, s | m), ((s | m) + 1, e)]
                    break
                if e & m != m:
                    stack += [(s, (e & ~m) - 1), (e & ~m, e)]
                    break
        else:
            out.append(list(zip(chr(s).encode(), chr(e).encode())))
    return out


class _Nfa:
    """Thompson's construction over bytes: fragments are (start, end) state pairs."""

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int, int]]] = []  # per state: (lo, hi, target)
        self.eps: list[list[int]] = []

    def state(self) -> int:
        if len(self.edges) >= MAX_NFA:
            raise RegexError(f"the pattern needs more than {MAX_NFA} automaton states; shorten "
                             "its repetitions")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def path(self, ranges) -> tuple[int, int]:
        start = cur = self.state()
        for lo, hi in ranges:
            nxt = self.state()
            self.edges[cur].append((lo, hi, nxt))
            cur = nxt
        return start, cur

    def chars(self, s: CharSet) -> tuple[int, int]:
        start, end = self.state(), self.state()
        for lo, hi in _byte_ranges(s.ascii):
            self.edges[start].append((lo, hi, end))
        for lo, hi in s.ranges:
            for seq in utf8_sequences(lo, hi):
                self._join(start, end, self.path(seq))
        return start, end

    def _join(self, start: int, end: int, frag: tuple[int, int]) -> None:
        self.eps[start].append(frag[0])
        self.eps[frag[1]].append(end)


def _byte_ranges(values) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


class _Parser:
    """A recursive-descent parser of the supported syntax into a syntax tree:
    ("chars", CharSet) | ("cat", [..]) | ("alt", [..]) | ("repeat", node, lo, hi|None)."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def fail(self, what: str):
        raise RegexError(f"the pattern {self.p!r} at {self.i}: {what}")

    def parse(self):
        if self.p.startswith("^"):
            self.i = 1
        node = self.alt()
        if self.i < len(self.p):
            self.fail("an unmatched ')'")
        return node

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def alt(self):
        branches = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def cat(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            if self.p[self.i] == "$" and self._at_end():
                self.i += 1
                continue
            items.append(self.quantified(self.atom()))
        return ("cat", items)

    def _at_end(self) -> bool:
        rest = self.p[self.i + 1:]
        return rest == "" or all(c == ")" for c in rest)

    def quantified(self, node):
        while True:
            c = self.peek()
            if c in ("*", "+", "?"):
                self.i += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            elif c == "{" and (counted := self._counted()) is not None:
                lo, hi = counted
            else:
                return node
            if self.peek() == "?":  # lazy: the same language
                self.i += 1
            elif self.peek() == "+":
                self.fail("possessive quantifiers are not supported")
            node = ("repeat", node, lo, hi)

    def _counted(self):
        """{n}, {n,} or {n,m} at i as (lo, hi), consumed; None (nothing consumed) otherwise."""
        end = self.p.find("}", self.i)
        if end < 0:
            return None
        body = self.p[self.i + 1: end]
        bounds = repeat_bounds(body)
        if bounds is None:
            return None
        if not repeat_fits(*bounds):
            self.fail(f"repetition {{{body}}} must have min <= max <= {MAX_REPEAT}")
        self.i = end + 1
        return bounds

    def atom(self):
        c = self.p[self.i]
        self.i += 1
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?P<", self.i):
                close = self.p.find(">", self.i)
                if close < 0:
                    self.fail("an unterminated group name")
                self.i = close + 1
            elif self.peek() == "?":
                self.fail("lookarounds, inline flags and other (?...) groups are not supported")
            node = self.alt()
            if self.peek() != ")":
                self.fail("a missing ')'")
            self.i += 1
            return node
        if c == "[":
            return ("chars", self.char_class())
        if c == ".":
            return ("chars", _char("\n").negate())
        if c == "\\":
            return ("chars", self.escape())
        if c in "*+?":
            self.fail(f"nothing to repeat before {c!r}")
        if c == "^":
            self.fail("'^' is supported only at the start")
        if c == "$":
            self.fail("'$' is supported only at the end")
        if c == ")":
            self.fail("an unmatched ')'")
        return ("chars", _char(c))

    def escape(self) -> CharSet:
        if self.i >= len(self.p):
            self.fail("a trailing backslash")
        c = self.p[self.i]
        self.i += 1
        if c in "dws":
            return CharSet({"d": _DIGIT, "w": _WORD, "s": _SPACE}[c])
        if c in "DWS":
            return CharSet({"D": _DIGIT, "W": _WORD, "S": _SPACE}[c]).negate()
        if c in _ESCAPES:
            return _char(_ESCAPES[c])
        if c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i: self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"\\{c} needs {n} hex digits")
            self.i += n
            if int(digits, 16) > MAX_CODEPOINT:
                self.fail(f"\\{c}{digits} is past U+10FFFF")
            return _char(chr(int(digits, 16)))
        if c.isalnum():
            self.fail(f"\\{c} is not supported (backreferences, \\b, \\A, \\Z and the like)")
        return _char(c)

    def char_class(self) -> CharSet:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        out = CharSet()
        first = True
        while True:
            if self.i >= len(self.p):
                self.fail("an unterminated '['")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "\\":
                self.i += 1
                item = self.escape()
                lo = _single(item)
            else:
                self.i += 1
                item, lo = _char(c), c
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                if lo is None:
                    self.fail("a class escape cannot begin a range")
                self.i += 1
                c2 = self.p[self.i]
                self.i += 1
                hi = _single(self.escape()) if c2 == "\\" else c2
                if hi is None or hi < lo:
                    self.fail(f"a bad range {lo!r}-{hi!r}")
                item = CharSet.span(ord(lo), ord(hi))
            out = out.union(item)
        return out.negate() if negated else out


def repeat_bounds(body: str) -> tuple[int, int | None] | None:
    """The (lo, hi) of a repetition {body} that reads n, n, or n,m (hi None: no bound), else
    None."""
    parts = body.split(",")
    if len(parts) > 2 or not parts[0].isdigit() or (len(parts) == 2 and parts[1]
                                                    and not parts[1].isdigit()):
        return None
    lo = int(parts[0])
    return lo, (lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None))


def repeat_fits(lo: int, hi: int | None) -> bool:
    return (hi is None or lo <= hi) and max(lo, hi or 0) <= MAX_REPEAT


def _char(c: str) -> CharSet:
    return CharSet([ord(c)]) if ord(c) < 128 else CharSet((), [(ord(c), ord(c))])


def _single(s: CharSet) -> str | None:
    """The one character of s, or None."""
    if s.ascii and not s.ranges and len(s.ascii) == 1:
        return chr(next(iter(s.ascii)))
    if not s.ascii and len(s.ranges) == 1 and s.ranges[0][0] == s.ranges[0][1]:
        return chr(s.ranges[0][0])
    return None


def _build(nfa: _Nfa, node) -> tuple[int, int]:
    kind = node[0]
    if kind == "chars":
        return nfa.chars(node[1])
    if kind == "cat":
        start = end = nfa.state()
        for item in node[1]:
            frag = _build(nfa, item)
            nfa.eps[end].append(frag[0])
            end = frag[1]
        return start, end
    if kind == "alt":
        start, end = nfa.state(), nfa.state()
        for branch in node[1]:
            nfa._join(start, end, _build(nfa, branch))
        return start, end
    _, inner, lo, hi = node
    start = end = nfa.state()
    for _ in range(lo):
        frag = _build(nfa, inner)
        nfa.eps[end].append(frag[0])
        end = frag[1]
    if hi is None:  # a loop: zero or more further copies
        frag = _build(nfa, inner)
        nfa.eps[end].append(frag[0])
        nfa.eps[frag[1]].append(frag[0])
        tail = nfa.state()
        nfa.eps[end].append(tail)
        nfa.eps[frag[1]].append(tail)
        return start, tail
    for _ in range(hi - lo):  # optional copies, each skippable to the end
        frag = _build(nfa, inner)
        nfa.eps[end].append(frag[0])
        skip = nfa.state()
        nfa.eps[end].append(skip)
        nfa.eps[frag[1]].append(skip)
        end = skip
    return start, end


def _dfa(nfa: _Nfa, start: int, accept: int) -> tuple[list[list[int]], list[bool]]:
    """Subset construction; states from which no accepting state can be reached are dropped
    (their transitions are -1), so every live transition can still end in a match."""
    def closure(states) -> frozenset:
        seen, stack = set(states), list(states)
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    first = closure([start])
    index = {first: 0}
    sets, table = [first], []
    while len(table) < len(sets):
        current = sets[len(table)]
        targets: dict[int, set] = collections.defaultdict(set)
        for s in current:
            for lo, hi, t in nfa.edges[s]:
                for b in range(lo, hi + 1):
                    targets[b].add(t)
        row = [-1] * 256
        for b, ts in targets.items():
            nxt = closure(ts)
            if nxt not in index:
                if len(sets) >= MAX_STATES:
                    raise RegexError(f"the pattern needs more than {MAX_STATES} automaton "
                                     "states; simplify it")
                index[nxt] = len(sets)
                sets.append(nxt)
            row[b] = index[nxt]
        table.append(row)
    accepting = [accept in s for s in sets]
    # Keep the states that can still reach an accepting one.
    live = set(i for i, a in enumerate(accepting) if a)
    changed = True
    while changed:
        changed = False
        for i, row in enumerate(table):
            if i not in live and any(t in live for t in row if t >= 0):
                live.add(i)
                changed = True
    if 0 not in live:
        raise RegexError("the pattern matches no text")
    order = sorted(live)
    renumber = {old: new for new, old in enumerate(order)}
    return ([[renumber.get(t, -1) for t in table[i]] for i in order],
            [accepting[i] for i in order])


_cache: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()


def compile_regex(pattern: str) -> "_core.RegexDfa":
    """The DFA of `pattern` over UTF-8 bytes, shared by the requests that use it (the last
    CACHED patterns are kept). Raises RegexError saying what is wrong and where."""
    if not isinstance(pattern, str) or not pattern:
        raise RegexError("the regex must be a non-empty string")
    with _lock:
        if pattern in _cache:
            _cache.move_to_end(pattern)
            return _cache[pattern]
    nfa = _Nfa()
    start, accept = _build(nfa, _Parser(pattern).parse())
    table, accepting = _dfa(nfa, start, accept)
    compiled = _core.RegexDfa([t for row in table for t in row], accepting)
    with _lock:
        _cache[pattern] = compiled
        while len(_cache) > CACHED:
            _cache.popitem(last=False)
    return compiled
