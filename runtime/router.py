"""Routes the executor's responses to the caller that enqueued each request.

One thread awaits all responses and puts each into its request's queue, so any number of
callers (threads, server handlers) can wait on their own requests at once.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref

from kiln import _core

_OPEN: "weakref.WeakSet[ResponseRouter]" = weakref.WeakSet()


@atexit.register
def _close_open_routers() -> None:
    """Stops every router's thread at interpreter exit, while the interpreter still runs: a
    daemon thread stopped later, as it retakes the GIL on its way out of await_responses,
    would abort the process ("terminate called without an active exception")."""
    for router in list(_OPEN):
        router.close()


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
        q = q if q is not None else queue.SimpleQueue()
        rid = self.executor.enqueue_request(request)
        with self._lock:
            self._queues[rid] = q
            for r in self._early.pop(rid, []):
                self._deliver(rid, q, r)
        return rid, q

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
        self._closed.set()
        self._thread.join(timeout=5)
