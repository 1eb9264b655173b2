"""KvCacheManager and Scheduler from Python: exact block ids, eviction order and step decisions."""

import pytest

from kiln.builder.errors import KilnError
from kiln.runtime.executor import KvCacheManager, Scheduler


def computed(kv, rid, tokens):
    assert kv.can_add_sequence(tokens, len(tokens))
    kv.add_sequence(rid, tokens, len(tokens))
    kv.cache_computed_blocks(rid, tokens, len(tokens))


def test_prefix_reuse_and_lru_eviction_order():
    kv = KvCacheManager(num_blocks=10, tokens_per_block=4)
    a = list(range(100, 110))
    computed(kv, 1, a)  # blocks 0, 1 full and cached; block 2 partial
    assert kv.block_ids(1) == [0, 1, 2]
    b = a[:8] + [7]
    assert kv.num_reusable_tokens(b) == 8
    assert kv.add_sequence(2, b, 9) == 8
    assert kv.block_ids(2) == [0, 1, 3]
    kv.remove_sequence(2)
    kv.remove_sequence(1)
    # Plain blocks are reused first; cached ones wait at the back, the tail of a sequence first.
    assert kv.free_block_ids() == [2, 3, 4, 5, 6, 7, 8, 9, 1, 0]
    stats = kv.stats()
    assert (stats["used_blocks"], stats["free_blocks"], stats["cached_blocks"]) == (0, 10, 2)
    assert (stats["looked_up_tokens"], stats["reused_tokens"]) == (19, 8)
    assert stats["hit_rate"] == pytest.approx(8 / 19)

    kv.add_sequence(3, list(range(500, 532)), 32)  # 8 blocks: evicts block 1 (used before 0)
    assert kv.block_ids(3) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert kv.num_reusable_tokens(a) == 8
    kv.allocate(3, 36)
    assert kv.block_ids(3)[-1] == 1
    assert kv.num_reusable_tokens(a) == 4
    assert not kv.can_allocate(3, 41)
    assert kv.token_capacity(3) == 40


def test_last_prompt_token_is_always_computed_and_chaining_matters():
    kv = KvCacheManager(num_blocks=8, tokens_per_block=4)
    computed(kv, 1, list(range(12)))
    assert kv.num_reusable_tokens(list(range(12))) == 8
    assert kv.num_reusable_tokens(list(range(8))) == 4
    # Block 4..7 is cached after 0..3, not after 50..53.
    assert kv.num_reusable_tokens([50, 51, 52, 53, 4, 5, 6, 7, 1]) == 0
    kv.reset_prefix_cache()
    assert kv.num_reusable_tokens(list(range(12))) == 0


def test_unknown_sequence_is_a_kiln_error():
    kv = KvCacheManager(num_blocks=2, tokens_per_block=4)
    with pytest.raises(KilnError, match="the KV cache has no sequence 5"):
        kv.block_ids(5)
    with pytest.raises(KilnError, match="at least one block"):
        KvCacheManager(num_blocks=0, tokens_per_block=4)


def run_step(scheduler, finished):
    out = scheduler.schedule()
    scheduler.update_computed(out)
    for s in out.sequences:
        if s.samples_next_token:
            scheduler.append_token(s.id, 9)
            seq = scheduler.sequence(s.id)
            if len(seq.tokens) - seq.num_prompt_tokens == seq.max_new_tokens:
                finished.append(s.id)
                scheduler.remove_request(s.id)
    return [(s.id, s.num_tokens) for s in out.sequences], out


def test_scheduler_budget_chunking_and_preemption():
    kv = KvCacheManager(num_blocks=32, tokens_per_block=4, enable_reuse=False)
    sched = Scheduler(kv, max_batch_size=4, max_num_tokens=8, max_seq_len=64)
    for rid, (n, new) in enumerate([(5, 3), (10, 2), (3, 2)], start=1):
        assert sched.add_request(rid, list(range(1, n + 1)), new) is None
    finished = []
    steps = [run_step(sched, finished)[0] for _ in range(4)]
    assert steps == [[(1, 5), (2, 3)], [(1, 1), (2, 7)], [(1, 1), (2, 1), (3, 3)], [(3, 1)]]
    assert finished == [1, 2, 3]

    small = KvCacheManager(num_blocks=4, tokens_per_block=2, enable_reuse=False)
    sched = Scheduler(small, max_batch_size=4, max_num_tokens=16, max_seq_len=64)
    sched.add_request(1, [1, 2, 3], 4)
    sched.add_request(2, [1, 2, 3], 4)
    finished = []
    assert run_step(sched, finished)[0] == [(1, 3), (2, 3)]
    assert run_step(sched, finished)[0] == [(1, 1), (2, 1)]
    ran, out = run_step(sched, finished)
    assert ran == [(1, 1)] and out.preempted == [2] and sched.num_preemptions == 1
    assert sched.sequence(2).tokens == [1, 2, 3, 9, 9] and sched.sequence(2).num_computed_tokens == 0
    assert run_step(sched, finished)[0] == [(1, 1)]
    assert run_step(sched, finished)[0] == [(2, 5)]
    assert run_step(sched, finished)[0] == [(2, 1)]
    assert finished == [1, 2] and small.stats()["used_blocks"] == 0


def test_scheduler_priority_and_rejection():
    kv = KvCacheManager(num_blocks=4, tokens_per_block=4)
    sched = Scheduler(kv, max_batch_size=1, max_num_tokens=64, max_seq_len=32)
    for rid, prio in [(1, 0), (2, 5), (3, 0), (4, 5)]:
        sched.add_request(rid, [1, 2], 1, priority=prio)
    assert sched.waiting_ids() == [2, 4, 1, 3]
    assert sched.add_request(9, list(range(10)), 8) == (
        "a prompt of 10 tokens plus up to 8 new tokens needs 5 KV blocks but the cache has only 4; "
        "lower max_new_tokens or give the backend more KV blocks"
    )
    assert sched.check_fits(10, 7) is None
