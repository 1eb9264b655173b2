"""Incremental detokenization: the text that a few new tokens add, and stop strings over text.

`text_delta` needs only the last few tokens sent before (CONTEXT_TOKENS of them), so it serves
both the HTTP server (which keeps them per request) and Triton's stateless postprocessing model
(which gets them from the engine model with each response). A character split across tokens is
held back until it completes; the deltas of a stream add up to `decode(all tokens)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

# A UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens; a little more covers
# decoders that look one token back (SentencePiece's leading-space rule).
CONTEXT_TOKENS = 6
_INCOMPLETE = "\ufffd"  # what a decoder yields for bytes that do not (yet) form a character


def text_delta(decode: Callable[[list[int]], str], context: Sequence[int], new: Sequence[int],
               final: bool) -> str:
    """Text that `new` adds after `context` (the tokens sent just before it)."""
    before = decode(list(context)).rstrip(_INCOMPLETE) if context else ""
    after = decode(list(context) + list(new))
    if not final:
        after = after.rstrip(_INCOMPLETE)
    if after.startswith(before):
        return after[len(before):]
    # A decoder that rewrites earlier text (space clean-up): continue from the common prefix.
    same = 0
    for a, b in zip(before, after):
        if a != b:
            break
        same += 1
    return after[same:]


class TextStream:
    """One request's text, token batch by token batch, cut at the first stop string.

    Text that could be the start of a stop string is held back until it is known not to be,
    so a streamed answer never shows part of a stop string. With `min_tokens`, a stop string
    counts only where it ends in the min_tokens-th token or later (vLLM's rule): the text of the
    tokens before it is never cut. `include_stop`: the stop string stays in the text (vLLM's
    include_stop_str_in_output), and what follows it goes.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = (),
                 min_tokens: int = 0, include_stop: bool = False) -> None:
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.tail: list[int] = []  # the last CONTEXT_TOKENS tokens added
        self.text = ""          # all text decoded so far, up to the stop string when one matched
        self.sent = 0           # characters of self.text already handed out
        self.stopped = False    # a stop string matched; the request should end
        self.min_tokens = min_tokens
        self.include_stop = include_stop
        self.count = 0          # tokens added
        # A stop string must end past this many characters (the text of the first
        # min_tokens - 1 tokens); None until those tokens are in.
        self.floor: int | None = 0 if min_tokens <= 1 else None

    def add(self, new: Sequence[int], final: bool) -> str:
        """Appends tokens; returns the text now safe to send (possibly empty)."""
        if self.stopped:
            return ""
        new = list(new)
        if self.floor is None and self.count + len(new) >= self.min_tokens:
            first = self.min_tokens - 1 - self.count
            self._extend(new[:first], False)
            self.floor, new = len(self.text), new[first:]
        self._extend(new, final)
        if self.stop and self.floor is not None:
            hit = self._first_stop()
            if hit is not None:
                at, stop = hit
                self.text = self.text[: at + (len(stop) if self.include_stop else 0)]
                self.stopped = final = True
        ready = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.sent: max(ready, self.sent)]
        self.sent = max(ready, self.sent)
        return out

    def _extend(self, new: list[int], final: bool) -> None:
        if not new and not final:
            return
        context = self.tail
        self.tail = (context + new)[-CONTEXT_TOKENS:]
        self.text += text_delta(self.decode, context, new, final)
        self.count += len(new)

    def _first_stop(self) -> tuple[int, str] | None:
        """(where, which) of the earliest stop string in the text not yet sent, the longest of
        those starting there."""
        # A match cannot start in text already sent: any tail that could begin one was held back.
        hits = [(i, s) for i, s in ((self.text.find(s, max(self.sent, self.floor - len(s) + 1)), s)
                                    for s in self.stop) if i >= 0]
        return min(hits, key=lambda h: (h[0], -len(h[1]))) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
