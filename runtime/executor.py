"""The C++ executor and its types, re-exported, plus a helper to wait for whole results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kiln._core import (
    Backend,
    Executor,
    ExecutorConfig,
    FinishReason,
    KvCacheManager,
    Request,
    Response,
    Sampler,
    SamplingConfig,
    Scheduler,
)
from kiln.builder.errors import KilnError

__all__ = [
    "Backend",
    "Completion",
    "Executor",
    "ExecutorConfig",
    "FinishReason",
    "KvCacheManager",
    "Request",
    "Response",
    "Sampler",
    "SamplingConfig",
    "Scheduler",
    "collect",
]


@dataclass(slots=True)
class Completion:
    """Everything one request produced, streamed pieces joined."""

    request_id: int
    output_token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.NOT_FINISHED
    error_message: str = ""

    def add(self, response: Response) -> None:
        self.output_token_ids.extend(response.output_token_ids)
        self.log_probs.extend(response.log_probs)
        if response.is_final:
            self.finish_reason = response.finish_reason
            self.error_message = response.error_message


def collect(executor: Executor, request_ids: list[int], timeout_s: float | None = None) -> dict[int, Completion]:
    """Waits for the final response of every id in `request_ids` and returns their completions.

    Responses of other requests that arrive meanwhile are left for their own waiters.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    completions = {rid: Completion(rid) for rid in request_ids}
    pending = set(request_ids)
    while pending:
        rid = min(pending)
        left_ms = None if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000.0)
        responses = executor.await_responses(rid, timeout_ms=left_ms)
        for response in responses:
            completions[rid].add(response)
            if response.is_final:
                pending.discard(rid)
        if responses:
            continue
        if deadline is not None and time.monotonic() >= deadline - 0.001:
            raise KilnError(
                f"{len(pending)} request(s) did not finish within {timeout_s} s; "
                "raise the timeout or check the backend"
            )
        # Otherwise await_responses returned at once: the executor does not know this id.
        raise KilnError(f"request {rid} is unknown to the executor or was already answered; pass ids from enqueue_request")
    return completions
