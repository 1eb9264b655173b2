"""Routes the executor's responses to the caller that enqueued each request.

One thread awaits all responses and puts each into its request's queue, so any number of
callers (threads, server handlers) can wait on their own requests at once.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref
from dataclasses import dataclass

from kiln import _core
from kiln.builder.errors import KilnError

SHUT_DOWN = "the runner is shut down; create a new one"

_OPEN: "weakref.WeakSet[ResponseRouter]" = weakref.WeakSet()


@atexit.register
def _close_open_routers() -> None:
    """Stops every router's thread at interpreter exit, while the interpreter still runs: a
    daemon thread stopped later, as it retakes the GIL on its way out of await_responses,
    would abort the process ("terminate called without an active exception")."""
    for router in list(_OPEN):
        router.close()


@dataclass(frozen=True, slots=True)
class ClosedResponse:
    """The final response of a request whose router closed before the executor's final one
    came: cancelled, as the executor's own shutdown ends a request (the fields of
    _core.Response)."""
    request_id: int
    output_token_ids: tuple = ()
    log_probs: tuple = ()
    is_final: bool = True
    finish_reason: "_core.FinishReason" = _core.FinishReason.CANCELLED
    error_message: str = "the runner shut down before the request finished"
    has_error: bool = False


class ResponseRouter:
    def __init__(self, executor: "_core.Executor") -> None:
        self.executor = executor
        self._queues: dict[int, queue.SimpleQueue] = {}
        self._early: dict[int, list] = {}  # responses that beat their caller's registration
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kiln-responses", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    def submit(self, request: "_core.Request", q: queue.SimpleQueue | None = None,
               ) -> tuple[int, queue.SimpleQueue]:
        """Enqueues a request; its responses arrive in `q` (a new queue unless given, so one
        caller can share a queue among its requests), the final one last."""
        rids, q = self.submit_many([request], q)
        return rids[0], q

    def submit_many(self, requests: "list[_core.Request]", q: queue.SimpleQueue | None = None,
                    ) -> tuple[list[int], queue.SimpleQueue]:
        """Enqueues requests together (Executor.enqueue_requests: the loop takes none of them
        before it has them all, so a batch's prompts share its first steps); their responses
        arrive in one queue, `q` or a new one. Returns their ids in order and the queue."""
        q = q if q is not None else queue.SimpleQueue()
        if self._closed.is_set():
            raise KilnError(SHUT_DOWN)
        rids = self.executor.enqueue_requests(list(requests))
        with self._lock:
            for rid in rids:
                if self._closed.is_set():  # closed since the check above, its sweep already done
                    self.executor.cancel_request(rid)
                    self._deliver(rid, q, ClosedResponse(rid))
                    continue
                self._queues[rid] = q
                for r in self._early.pop(rid, []):
                    self._deliver(rid, q, r)
        return rids, q

    def cancel(self, rid: int) -> None:
        self.executor.cancel_request(rid)

    def _deliver(self, rid: int, q: queue.SimpleQueue, response) -> None:
        q.put(response)
        if response.is_final:
            self._queues.pop(rid, None)

    def _loop(self) -> None:
        while not self._closed.is_set():
            for r in self.executor.await_responses(timeout_ms=50.0):
                with self._lock:
                    q = self._queues.get(r.request_id)
                    if q is None:
                        self._early.setdefault(r.request_id, []).append(r)
                    else:
                        self._deliver(r.request_id, q, r)
            if not self._queues and not self._early:
                self._closed.wait(0.002)  # idle: await_responses returns at once with nothing in flight

    def close(self) -> None:
        """Stops the thread, then ends every request still registered: with the executor's
        responses already out (its own shutdown's final ones among them), else cancelled
        (ClosedResponse; the executor is asked to cancel it), so that no caller waits on a
        queue nobody feeds. Idempotent."""
        with self._lock:
            self._closed.set()
        self._thread.join(timeout=5)
        with self._lock:
            for r in self.executor.await_responses(timeout_ms=0.0):
                q = self._queues.get(r.request_id)
                if q is not None:
                    self._deliver(r.request_id, q, r)
            for rid, q in list(self._queues.items()):
                self.executor.cancel_request(rid)
                self._deliver(rid, q, ClosedResponse(rid))
