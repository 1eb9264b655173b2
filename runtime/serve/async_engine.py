"""The server's door to the one executor: admission against a queue bound, and responses
handed from the router's thread to the event loop."""
from __future__ import annotations

import asyncio
import time

from kiln import _core
from kiln.runtime.serve.errors import ApiError

RETRY_AFTER_S = 1


class Submission:
    """The executor requests of one HTTP request and their responses, in arrival order.

    The router calls `put` from its own thread; the handler awaits `get` in the event loop.
    Closing cancels whatever has not finished (a client that went away).
    """

    def __init__(self, engine: "AsyncEngine", loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []
        self.pending: set[int] = set()
        self.submitted_at = time.perf_counter()
        self.closed = False

    def put(self, response: "_core.Response") -> None:  # router thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, response)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
            pass

    async def get(self) -> "_core.Response":
        response = await self.queue.get()
        if response.is_final and response.request_id in self.pending:
            self.pending.discard(response.request_id)
            self.engine.in_flight -= 1
        return response

    def stop(self, rid: int) -> None:
        """Ends one request early (a stop string matched); not a cancellation by the client."""
        if rid in self.pending:
            self.engine.router.cancel(rid)
            self.pending.discard(rid)
            self.engine.in_flight -= 1

    def close(self) -> None:
        """Cancels the unfinished requests; idempotent."""
        if self.closed:
            return
        self.closed = True
        for rid in self.pending:
            self.engine.router.cancel(rid)
        self.engine.in_flight -= len(self.pending)
        self.engine.cancelled += len(self.pending)
        self.pending.clear()


class AsyncEngine:
    """Admits requests into the executor while the wait queue is under its bound.

    A request is waiting when more are in flight than the executor can batch; past
    `max_queue_size` waiting requests, new ones get a 503 with Retry-After.
    """

    def __init__(self, runner, max_queue_size: int) -> None:
        self.runner = runner
        self.router = runner.router
        self.max_batch_size = runner.executor.config.max_batch_size
        self.max_queue_size = max_queue_size
        self.in_flight = 0   # executor requests submitted and not finished (event loop only)
        self.cancelled = 0   # requests cancelled because their client went away

    @property
    def queue_depth(self) -> int:
        return max(0, self.in_flight - self.max_batch_size)

    def submit(self, requests: list["_core.Request"]) -> Submission:
        waiting = max(0, self.in_flight + len(requests) - self.max_batch_size)
        if waiting > self.max_queue_size:
            raise ApiError(503, f"the server is at capacity ({self.in_flight} requests in flight, "
                           f"{self.queue_depth} waiting, bound {self.max_queue_size}); retry in "
                           f"{RETRY_AFTER_S} s", code="overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        sub = Submission(self, asyncio.get_running_loop())
        # A request's choices together: they share its first steps.
        rids, _ = self.router.submit_many(requests, sub)
        sub.ids += rids
        sub.pending.update(rids)
        self.in_flight += len(rids)
        return sub
