"""kiln._core.Executor driven by a deterministic Python backend that checks the step ABI."""

import threading
import time

import numpy as np
import pytest

from kiln.builder.errors import KilnError
from kiln.runtime.executor import (
    Executor,
    ExecutorConfig,
    FinishReason,
    Request,
    SamplingConfig,
    collect,
)

VOCAB = 64
TPB = 4
MAX_SEQ_LEN = 64
STEP_KEYS = {
    "input_ids": np.int32,
    "positions": np.int32,
    "slot_mapping": np.int64,
    "block_tables": np.int32,
    "context_lens": np.int32,
    "query_start": np.int32,
    "last_token_index": np.int32,
}


def favoured(context):
    """The token the fake model favours after `context`."""
    return (context[-1] * 7 + (len(context) - 1) + sum(context) % 13) % VOCAB


def expected_greedy(prompt, max_new, end_id=-1, stop_words=(), max_seq_len=MAX_SEQ_LEN):
    context, out = list(prompt), []
    while True:
        out.append(favoured(context))
        context.append(out[-1])
        if out[-1] == end_id or any(out[-len(w) :] == list(w) for w in stop_words if len(w) <= len(out)):
            return out
        if len(out) >= max_new or len(context) >= max_seq_len:
            return out


class FakeBackend:
    """A paged stand-in for a model: it keeps the token of every KV slot it is given, reads each
    sequence's context back through its block table, and favours a token of that context. So a
    wrong block table, slot mapping or reused block changes the generated tokens."""

    def __init__(self, num_blocks=32, max_blocks_per_seq=MAX_SEQ_LEN // TPB):
        self.num_blocks = num_blocks
        self.max_blocks = max_blocks_per_seq
        self.slots = np.full(num_blocks * TPB, -1, np.int64)
        self.steps = []
        self.fail_when = None
        self.before_step = None

    def check(self, step):
        assert set(step) == set(STEP_KEYS)
        for key, dtype in STEP_KEYS.items():
            assert step[key].dtype == dtype, key
        t, b = step["input_ids"].shape[0], step["context_lens"].shape[0]
        assert step["positions"].shape == step["slot_mapping"].shape == (t,)
        assert step["block_tables"].shape == (b, self.max_blocks)
        assert step["query_start"].shape == (b + 1,) and step["last_token_index"].shape == (b,)
        qs = step["query_start"]
        assert qs[0] == 0 and qs[-1] == t and np.all(np.diff(qs) > 0)
        assert np.array_equal(step["last_token_index"], qs[1:] - 1)
        assert np.all((step["input_ids"] >= 0) & (step["input_ids"] < VOCAB))
        for i in range(b):
            pos = step["positions"][qs[i] : qs[i + 1]]
            assert np.array_equal(pos, np.arange(step["context_lens"][i] - len(pos), step["context_lens"][i]))
            blocks = step["block_tables"][i, pos // TPB].astype(np.int64)
            assert np.all((blocks >= 0) & (blocks < self.num_blocks))
            assert np.array_equal(step["slot_mapping"][qs[i] : qs[i + 1]], blocks * TPB + pos % TPB)

    def forward(self, step):
        if self.before_step:
            self.before_step(step)
        self.check(step)
        self.steps.append({k: v.copy() for k, v in step.items()})
        if self.fail_when and self.fail_when(step):
            raise ValueError("poisoned prompt")
        self.slots[step["slot_mapping"]] = step["input_ids"]
        b = step["context_lens"].shape[0]
        logits = np.empty((b, VOCAB), np.float32)
        for i in range(b):
            pos = np.arange(step["context_lens"][i])
            context = self.slots[step["block_tables"][i, pos // TPB].astype(np.int64) * TPB + pos % TPB].tolist()
            fav = favoured(context)
            logits[i] = ((np.arange(VOCAB) * 31 + fav * 17) % 23) * 0.1
            logits[i, fav] += 5.0
        return logits


def config(**overrides):
    values = dict(vocab_size=VOCAB, max_batch_size=4, max_num_tokens=16, max_seq_len=MAX_SEQ_LEN, tokens_per_block=TPB)
    values.update(overrides)
    return ExecutorConfig(**values)


GREEDY = SamplingConfig(temperature=0.0)


def greedy(prompt, max_new, **kwargs):
    return Request(prompt, max_new_tokens=max_new, sampling_config=GREEDY, **kwargs)


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def executor(backend):
    with Executor(config(), backend) as ex:
        yield ex


def test_greedy_outputs_follow_the_model_and_the_abi(executor, backend):
    prompts = [[1, 2, 3], [5, 9, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 2, 3, 4], [40]]
    ids = executor.enqueue_requests([greedy(p, 10) for p in prompts])
    done = collect(executor, ids, timeout_s=30)
    for rid, prompt in zip(ids, prompts):
        assert done[rid].output_token_ids == expected_greedy(prompt, 10)
        assert done[rid].finish_reason == FinishReason.LENGTH
    assert max(s["input_ids"].shape[0] for s in backend.steps) <= 16  # the 19-token prompt was chunked
    assert executor.get_kv_cache_stats()["used_blocks"] == 0


def test_streaming_equals_non_streaming(executor):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    plain = executor.enqueue_request(greedy(prompt, 12, return_log_probs=True))
    streamed = executor.enqueue_request(greedy(prompt, 12, return_log_probs=True, streaming=True))
    pieces = []
    while not pieces or not pieces[-1].is_final:
        pieces += executor.await_responses(streamed, timeout_ms=10_000)
    done = collect(executor, [plain], timeout_s=30)[plain]
    assert [len(p.output_token_ids) for p in pieces] == [1] * 12
    assert [t for p in pieces for t in p.output_token_ids] == done.output_token_ids == expected_greedy(prompt, 12)
    assert [x for p in pieces for x in p.log_probs] == done.log_probs
    assert all(lp < 0 for lp in done.log_probs)
    assert [p.is_final for p in pieces] == [False] * 11 + [True]


def test_cancel_mid_stream(backend):
    cancelled = threading.Event()
    backend.before_step = lambda step: cancelled.wait(10) if len(backend.steps) >= 3 else None
    with Executor(config(), backend) as ex:
        rid = ex.enqueue_request(greedy([1, 2, 3], 40, streaming=True))
        first = ex.await_responses(rid, timeout_ms=10_000)
        assert first and not first[0].is_final
        ex.cancel_request(rid)
        cancelled.set()
        done = collect(ex, [rid], timeout_s=30)[rid]
        tokens = [t for r in first for t in r.output_token_ids] + done.output_token_ids
        assert done.finish_reason == FinishReason.CANCELLED
        assert 1 <= len(tokens) < 40
        assert tokens == expected_greedy([1, 2, 3], 40)[: len(tokens)]
        assert ex.get_kv_cache_stats()["used_blocks"] == 0
        assert ex.await_responses(rid, timeout_ms=0) == []


def test_stop_words_and_end_id(executor):
    prompt = [7, 8, 9]
    full = expected_greedy(prompt, 20)
    end_id = full[4]
    stop = [[63, 63], [full[2], full[3]]]
    ids = executor.enqueue_requests([greedy(prompt, 20, end_id=end_id), greedy(prompt, 20, stop_words=stop)])
    done = collect(executor, ids, timeout_s=30)
    assert done[ids[0]].output_token_ids == full[: full.index(end_id) + 1]
    assert done[ids[0]].finish_reason == FinishReason.END_ID
    assert done[ids[1]].output_token_ids == expected_greedy(prompt, 20, stop_words=stop)
    assert done[ids[1]].output_token_ids[-2:] == stop[1]  # the matched stop word stays in the output
    assert done[ids[1]].finish_reason == FinishReason.STOP_WORDS


def test_seeded_sampling_is_reproducible_regardless_of_batching():
    sampling = SamplingConfig(temperature=1.5, top_k=20, top_p=0.95, seed=1234)
    request = Request([4, 8, 15, 16, 23, 42], max_new_tokens=12, sampling_config=sampling, return_log_probs=True)

    def run(companions):
        with Executor(config(), FakeBackend()) as ex:
            others = [
                Request([i + 1, 2, 3], max_new_tokens=12, sampling_config=SamplingConfig(temperature=1.0, seed=i))
                for i in range(companions)
            ]
            ids = ex.enqueue_requests(others + [request])
            done = collect(ex, ids, timeout_s=30)[ids[-1]]
            return done.output_token_ids, done.log_probs

    alone = run(0)
    assert len(alone[0]) == 12
    assert run(5) == alone
    assert alone[0] != expected_greedy(request.input_token_ids, 12)  # really sampled


def test_eight_threads_enqueue_at_once(executor):
    results, errors = {}, []
    barrier = threading.Barrier(8)

    def client(k):
        try:
            prompts = [[(k * 5 + i) % 60 + 1, k + 1, i + 2] for i in range(6)]
            barrier.wait()
            ids = [executor.enqueue_request(greedy(p, 8, streaming=(i % 2 == 0))) for i, p in enumerate(prompts)]
            done = collect(executor, ids, timeout_s=60)
            results.update({(k, i): (done[rid].output_token_ids, p) for i, (rid, p) in enumerate(zip(ids, prompts))})
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 48
    for tokens, prompt in results.values():
        assert tokens == expected_greedy(prompt, 8)


def test_requests_enqueued_together_share_the_first_step():
    # Each step gives the loop time to take a request enqueued one at a time: a batch enqueued
    # together is taken whole, its prompts in one step (they fit its tokens and sequences).
    backend = FakeBackend(num_blocks=64)
    backend.before_step = lambda step: time.sleep(0.002)
    prompts = [[(i * 7) % 60 + 1, i + 2] for i in range(16)]
    with Executor(config(max_batch_size=16, max_num_tokens=32), backend) as ex:
        for _ in range(3):
            backend.steps.clear()
            ids = ex.enqueue_requests([greedy(p, 3) for p in prompts])
            done = collect(ex, ids, timeout_s=30)
            assert [done[rid].output_token_ids for rid in ids] == [expected_greedy(p, 3) for p in prompts]
            assert backend.steps[0]["context_lens"].shape == (16,)
            assert len(backend.steps) == 3


def test_router_submits_a_batch_together():
    from kiln.runtime.router import ResponseRouter

    backend = FakeBackend(num_blocks=64)
    backend.before_step = lambda step: time.sleep(0.002)
    prompts = [[(i * 11) % 60 + 1, i + 3, 7] for i in range(12)]
    with Executor(config(max_batch_size=16, max_num_tokens=64), backend) as ex:
        router = ResponseRouter(ex)
        rids, q = router.submit_many([greedy(p, 4) for p in prompts])
        tokens, pending = {rid: [] for rid in rids}, set(rids)
        while pending:
            r = q.get(timeout=30)
            tokens[r.request_id] += r.output_token_ids
            if r.is_final:
                pending.remove(r.request_id)
        assert [tokens[rid] for rid in rids] == [expected_greedy(p, 4) for p in prompts]
        assert backend.steps[0]["context_lens"].shape == (12,)
        router.close()
        with pytest.raises(KilnError, match="shut down"):
            router.submit_many([greedy(prompts[0], 2)])


def test_bad_requests_get_errors_while_others_finish(executor):
    bad = [
        (greedy([], 4), "bad request: input_token_ids is empty; pass at least one token"),
        (greedy([1, 64], 4), "bad request: input_token_ids[1] is 64, outside the vocabulary [0, 64)"),
        (greedy([1], 0), "bad request: max_new_tokens is 0; ask for at least 1 new token"),
        (
            Request([1], sampling_config=SamplingConfig(top_p=0.0)),
            "bad request: sampling_config: top_p is 0 but must be in (0, 1] (1 = off)",
        ),
        (greedy([1], 4, end_id=99), "bad request: end_id is 99, outside the vocabulary [0, 64) (use -1 for none)"),
        (
            greedy([1] * 64, 4),
            "bad request: the prompt has 64 tokens but max_seq_len is 64; shorten it to at most 63 tokens "
            "or build the engine with a larger max_seq_len",
        ),
        (greedy([2] * 10, 4, stop_words=[[]]), "bad request: stop_words[0] is empty; each stop word needs at least one token"),
    ]
    good = [greedy([5, 6, 7], 6), greedy([9], 3)]
    ids = executor.enqueue_requests([good[0]] + [r for r, _ in bad] + [good[1]])
    done = collect(executor, ids, timeout_s=30)
    for rid, (_, message) in zip(ids[1:-1], bad):
        assert done[rid].finish_reason == FinishReason.ERROR
        assert done[rid].error_message == message
        assert "\n" not in message
    assert done[ids[0]].output_token_ids == expected_greedy([5, 6, 7], 6)
    assert done[ids[-1]].output_token_ids == expected_greedy([9], 3)


def test_request_that_can_never_fit_the_pool():
    with Executor(config(), FakeBackend(num_blocks=8)) as ex:
        rid = ex.enqueue_request(greedy([1] * 30, 10))
        done = collect(ex, [rid], timeout_s=30)[rid]
    assert done.error_message == (
        "bad request: a prompt of 30 tokens plus up to 10 new tokens needs 10 KV blocks but the cache has only 8; "
        "lower max_new_tokens or give the backend more KV blocks"
    )


def test_backend_that_raises_fails_only_that_step(backend):
    backend.fail_when = lambda step: bool(np.any((step["positions"] == 0) & (step["input_ids"] == 63)))
    with Executor(config(), backend) as ex:
        poisoned = ex.enqueue_request(greedy([63, 1, 2], 5))
        failed = collect(ex, [poisoned], timeout_s=30)[poisoned]
        assert failed.finish_reason == FinishReason.ERROR
        assert failed.error_message == "the backend failed in step 0: ValueError: poisoned prompt"
        assert ex.get_kv_cache_stats()["used_blocks"] == 0
        fine = ex.enqueue_request(greedy([1, 2], 5))
        assert collect(ex, [fine], timeout_s=30)[fine].output_token_ids == expected_greedy([1, 2], 5)
        assert ex.get_latest_iteration_stats()["iteration"] >= 5


def test_backend_returning_a_wrong_shape_fails_the_step():
    class WrongShape(FakeBackend):
        def forward(self, step):
            return super().forward(step)[:, :10]

    with Executor(config(), WrongShape()) as ex:
        rid = ex.enqueue_request(greedy([1, 2], 3))
        done = collect(ex, [rid], timeout_s=30)[rid]
    assert done.error_message == "the backend failed in step 0: forward returned 10 logits, expected 1 x 64"


def test_prefix_reuse_lowers_computed_tokens(executor):
    prompt = [9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8]
    first = executor.enqueue_request(greedy(prompt, 2))
    a = collect(executor, [first], timeout_s=30)[first]
    assert executor.get_latest_iteration_stats()["total_computed_prompt_tokens"] == 20
    second = executor.enqueue_request(greedy(prompt, 2))
    b = collect(executor, [second], timeout_s=30)[second]
    stats = executor.get_latest_iteration_stats()
    assert stats["total_computed_prompt_tokens"] == 24  # 16 tokens (4 full blocks) came from the cache
    assert stats["total_reused_tokens"] == 16
    assert a.output_token_ids == b.output_token_ids == expected_greedy(prompt, 2)
    kv = executor.get_kv_cache_stats()
    assert (kv["reused_tokens"], kv["looked_up_tokens"], kv["hit_rate"]) == (16, 40, 0.4)


def test_preemption_keeps_outputs_exact():
    backend = FakeBackend(num_blocks=12)
    go = threading.Event()
    backend.before_step = lambda step: go.wait(10)
    with Executor(config(max_batch_size=6, max_num_tokens=64), backend) as ex:
        prompts = [[1, 2, 3, 4, 5, 6, 7, 10 + i] for i in range(6)]
        ids = ex.enqueue_requests([greedy(p, 24) for p in prompts])
        go.set()
        done = collect(ex, ids, timeout_s=30)
        assert [done[r].output_token_ids for r in ids] == [expected_greedy(p, 24) for p in prompts]
        stats = ex.get_latest_iteration_stats()
        assert stats["total_preemptions"] > 0
        assert ex.get_kv_cache_stats()["used_blocks"] == 0


def test_shutdown_answers_pending_requests(backend):
    entered, release = threading.Event(), threading.Event()

    def hold(step):
        entered.set()
        release.wait(10)

    backend.before_step = hold
    ex = Executor(config(), backend)
    ids = ex.enqueue_requests([greedy([t, t], 10) for t in range(1, 7)])
    assert entered.wait(10)
    stopper = threading.Thread(target=ex.shutdown)
    stopper.start()
    time.sleep(0.02)
    release.set()
    stopper.join()
    done = collect(ex, ids, timeout_s=10)
    assert {d.finish_reason for d in done.values()} == {FinishReason.CANCELLED}
    assert {d.error_message for d in done.values()} == {"the executor shut down before the request finished"}
    late = ex.enqueue_request(greedy([1], 1))
    [response] = ex.await_responses(late, timeout_ms=0)
    assert response.error_message == "the executor is shut down; create a new one"
    assert ex.await_responses() == []  # nothing in flight: returns at once


def test_dropping_a_busy_executor_does_not_hang():
    ex = Executor(config(), FakeBackend())
    ex.enqueue_requests([greedy([1, 2, 3], 50) for _ in range(4)])
    del ex  # joins the loop thread with the GIL released


def test_config_and_backend_errors_are_kiln_errors():
    with pytest.raises(KilnError, match="^invalid executor config: max_seq_len is 1 but must be at least 2$"):
        Executor(config(max_seq_len=1), FakeBackend())
    with pytest.raises(KilnError, match="must have `num_blocks` and `forward"):
        Executor(config(), object())
    with pytest.raises(KilnError, match="holds 0 KV blocks"):
        Executor(config(), FakeBackend(num_blocks=0))
    assert config().max_blocks_per_seq == 16
    with pytest.raises(KilnError, match="request 99 is unknown"):
        with Executor(config(), FakeBackend()) as ex:
            collect(ex, [99])
