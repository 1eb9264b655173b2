"""ModelRunner over the C++ executor and the CPU reference backend, against HuggingFace."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
import transformers

from kiln.builder.errors import KilnError
from kiln.runtime import ModelRunner
from kiln_testing import hf_greedy, make_tiny_checkpoint, mixed_traffic

ARCHS = ["llama", "llama-tied", "mistral", "qwen2", "qwen3", "phi3", "phi3-longrope", "gemma2",
         "gemma3", "granite", "olmo2", "smollm3", "glm4", "olmo3", "exaone4", "seed_oss",
         "ernie4_5", "helium", "ministral", "cohere", "cohere2", "starcoder2"]


def prompts(vocab: int, lengths, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def runners(tiny_engine):
    made = {}

    def get(arch: str, **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in made:
            ckpt, engine = tiny_engine(arch)
            model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
            made[key] = (ModelRunner.from_dir(engine, device="cpu", **kwargs), model)
        return made[key]

    yield get
    for runner, _ in made.values():
        runner.shutdown()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_huggingface_alone_and_batched(runners, arch):
    runner, model = runners(arch)
    batch = prompts(runner.vocab_size, (5, 17, 9, 30), seed=ARCHS.index(arch))
    expected = [hf_greedy(model, p, 12) for p in batch]
    out = runner.generate([batch[0]], max_new_tokens=12, end_id=-1, return_dict=True)
    assert out["output_ids"][0, 0].tolist() == batch[0] + expected[0]
    out = runner.generate([torch.tensor(p) for p in batch], max_new_tokens=12, end_id=-1,
                          pad_id=0, return_dict=True)
    width = max(len(p) for p in batch) + 12
    assert out["output_ids"].shape == (4, 1, width)
    for i, p in enumerate(batch):
        assert out["sequence_lengths"][i, 0] == len(p) + 12
        assert out["output_ids"][i, 0, : len(p) + 12].tolist() == p + expected[i]
        assert (out["output_ids"][i, 0, len(p) + 12:] == 0).all()
    assert out["finish_reasons"] == ["length"] * 4


def test_prompts_as_numpy_arrays_and_integers(runners):
    """A prompt may be a 1-D integer array or a list of numpy integers, as from a tokenizer's
    return_tensors="np"."""
    runner, model = runners("llama")
    batch = prompts(runner.vocab_size, (7, 12), seed=3)
    expected = [hf_greedy(model, p, 6) for p in batch]
    out = runner.generate([np.array(batch[0], dtype=np.int64), [np.int32(t) for t in batch[1]]],
                          max_new_tokens=6, end_id=-1)
    for i, p in enumerate(batch):
        assert out[i, 0, : len(p) + 6].tolist() == p + expected[i]
    rows = runner.generate(np.array([batch[0], batch[1][:7]]), max_new_tokens=6, end_id=-1)
    assert rows[0, 0, :13].tolist() == batch[0] + expected[0]
    with pytest.raises(KilnError, match="or a 2-D integer tensor or array"):
        runner.generate(np.ones((2, 3)), max_new_tokens=6)


def test_requests_arriving_mid_flight_get_the_same_tokens(runners):
    runner, model = runners("llama")
    batch = prompts(runner.vocab_size, (11, 23, 6, 40, 15, 8), seed=5)
    expected = [hf_greedy(model, p, 16) for p in batch]
    results = [None] * len(batch)

    def go(i):
        results[i] = runner.generate([batch[i]], max_new_tokens=16, end_id=-1)[0, 0].tolist()

    threads = []
    for i in range(len(batch)):  # each arrives while earlier ones are decoding
        threads.append(threading.Thread(target=go, args=(i,)))
        threads[-1].start()
        threading.Event().wait(0.02)
    for t in threads:
        t.join()
    for i, p in enumerate(batch):
        assert results[i] == p + expected[i]


def test_prefix_reuse_same_tokens_fewer_computed(runners):
    runner, model = runners("qwen2")
    shared = prompts(runner.vocab_size, (40,), seed=9)[0]
    first = runner.generate([shared + [5, 6, 7]], max_new_tokens=8, end_id=-1)
    before = runner.iteration_stats()
    second = runner.generate([shared + [5, 6, 7]], max_new_tokens=8, end_id=-1)
    after = runner.iteration_stats()
    assert torch.equal(first, second)
    assert second[0, 0, 43:].tolist() == hf_greedy(model, shared + [5, 6, 7], 8)
    computed = after["total_computed_prompt_tokens"] - before["total_computed_prompt_tokens"]
    reused = after["total_reused_tokens"] - before["total_reused_tokens"]
    assert reused == 40  # ten full blocks of 4 tokens
    assert computed == 3
    assert runner.kv_cache_stats()["hit_rate"] > 0


def test_preemption_when_blocks_run_out_loses_nothing(tiny_engine):
    ckpt, engine = tiny_engine("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    batch = prompts(320, (18, 22, 15, 20), seed=31)
    expected = [hf_greedy(model, p, 24) for p in batch]
    # 20 blocks of 4 tokens: all four fit at first, not once they have grown.
    with ModelRunner.from_dir(engine, device="cpu", max_tokens_in_paged_kv_cache=80) as runner:
        out = runner.generate(batch, max_new_tokens=24, end_id=-1, return_dict=True)
        assert runner.iteration_stats()["total_preemptions"] > 0
        assert runner.kv_cache_stats()["used_blocks"] == 0
    for i, p in enumerate(batch):
        assert out["output_ids"][i, 0, : len(p) + 24].tolist() == p + expected[i]


def test_mixed_traffic_under_preemption_loses_nothing_and_leaks_no_block(tiny_engine):
    """kiln_testing.mixed_traffic on the CPU backend (tests/gpu/test_runtime_gpu.py: on the GPU)."""
    ckpt, engine = tiny_engine("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with ModelRunner.from_dir(engine, device="cpu", max_tokens_in_paged_kv_cache=96) as runner:
        mixed_traffic(runner, model)


def test_guaranteed_no_evict_admits_only_what_can_finish(tiny_engine):
    ckpt, engine = tiny_engine("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    batch = prompts(320, (18, 22, 15, 20), seed=31)
    expected = [hf_greedy(model, p, 24) for p in batch]
    # The pool of the preemption case above: now requests wait instead of being preempted.
    with ModelRunner.from_dir(engine, device="cpu", max_tokens_in_paged_kv_cache=80,
                              capacity_scheduler_policy="guaranteed_no_evict") as runner:
        out = runner.generate(batch, max_new_tokens=24, end_id=-1, return_dict=True)
        assert runner.iteration_stats()["total_preemptions"] == 0
        assert runner.kv_cache_stats()["used_blocks"] == 0
    for i, p in enumerate(batch):
        assert out["output_ids"][i, 0, : len(p) + 24].tolist() == p + expected[i]
    with pytest.raises(KilnError, match="capacity_scheduler_policy must be one of max_utilization, "
                                        "guaranteed_no_evict, got 'static'"):
        ModelRunner.from_dir(engine, device="cpu", capacity_scheduler_policy="static")
    with pytest.raises(KilnError, match="^fp8_fast_accumulation applies to the GPU backend's FP8 "
                                        "GEMMs; this runner is on cpu$"):
        ModelRunner.from_dir(engine, device="cpu", fp8_fast_accumulation=True)
    for asked in (None, False):  # the default (fast on the GPU) and promoted: nothing to refuse
        with ModelRunner.from_dir(engine, device="cpu", fp8_fast_accumulation=asked) as runner:
            assert runner.fp8_fast_accumulation is False
    with pytest.raises(KilnError, match="^kernels_from_rows applies to the GPU backend's GEMMs; this "
                                        "runner is on cpu$"):
        ModelRunner.from_dir(engine, device="cpu", kernels_from_rows=4096)
    with pytest.raises(KilnError, match="^kernels_from_rows applies to the GPU backend's GEMMs"):
        ModelRunner.from_dir(engine, device="cpu", kernels_from_rows=0)
    with pytest.raises(KilnError, match="^kernels_from_rows must be None \\(the engine's preferences\\), "
                                        "0 \\(every choice timed\\) or a number of rows, got -1$"):
        ModelRunner.from_dir(engine, device="cpu", kernels_from_rows=-1)


def test_streaming_yields_exactly_the_non_streaming_tokens(runners):
    runner, _ = runners("mistral")
    batch = prompts(runner.vocab_size, (7, 19), seed=2)
    final = runner.generate(batch, max_new_tokens=10, end_id=-1, return_dict=True)
    seen = []
    for partial in runner.generate(batch, max_new_tokens=10, end_id=-1, streaming=True,
                                   return_dict=True):
        lengths = partial["sequence_lengths"][:, 0].tolist()
        assert not seen or all(a >= b for a, b in zip(lengths, seen[-1]))
        seen.append(lengths)
    assert len(seen) > 2
    assert torch.equal(partial["output_ids"], final["output_ids"])


def test_cancel_mid_stream_frees_blocks(runners):
    runner, _ = runners("llama")
    stream = runner.generate(prompts(runner.vocab_size, (9,), seed=4), max_new_tokens=100,
                             end_id=-1, streaming=True, return_dict=True)
    for i, partial in enumerate(stream):
        if i == 2:
            break
    stream.close()  # abandons the request: the runner cancels it
    assert int(partial["sequence_lengths"][0, 0]) < 9 + 100
    deadline = threading.Event()
    for _ in range(100):
        stats = runner.kv_cache_stats()
        if stats["used_blocks"] == 0:
            break
        deadline.wait(0.02)
    assert stats["used_blocks"] == 0
    assert stats["free_blocks"] == stats["total_blocks"]  # cached blocks count as free


def test_stop_words_and_end_id(runners):
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (12,), seed=7)[0]
    expected = hf_greedy(model, p, 12)
    stop = expected[4:6]
    out = runner.generate([p], max_new_tokens=12, end_id=-1, stop_words_list=[stop], return_dict=True)
    first = next(i for i in range(len(expected) - 1) if expected[i: i + 2] == stop)
    assert out["output_ids"][0, 0, : out["sequence_lengths"][0, 0]].tolist() == p + expected[: first + 2]
    assert out["finish_reasons"] == ["stop_words"]
    out = runner.generate([p], max_new_tokens=12, end_id=expected[3], return_dict=True)
    assert out["sequence_lengths"][0, 0] == len(p) + expected.index(expected[3]) + 1
    assert out["finish_reasons"] == ["end_id"]


def test_min_tokens_equals_huggingface_min_new_tokens(runners):
    """min_tokens holds back end_id as HF's min_new_tokens does (its logits processor), and
    keeps a stop word from ending the request before then."""
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (12,), seed=7)[0]
    expected = hf_greedy(model, p, 12)
    end = expected[2]
    with torch.no_grad():
        hf = model.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=6, do_sample=False,
                            eos_token_id=end, pad_token_id=end)[0, len(p):].tolist()
    assert end not in hf[:6] and hf[:2] == expected[:2]
    out = runner.generate([p], max_new_tokens=12, end_id=end, min_tokens=6, return_dict=True)
    assert out["output_ids"][0, 0, len(p): out["sequence_lengths"][0, 0]].tolist() == hf[: hf.index(end) + 1 if end in hf else 12]
    stop = expected[1:3]
    out = runner.generate([p], max_new_tokens=12, end_id=-1, stop_words_list=[stop], min_tokens=5,
                          return_dict=True)
    generated = out["output_ids"][0, 0, len(p): out["sequence_lengths"][0, 0]].tolist()
    assert generated[:3] == expected[:3] and len(generated) >= 5
    assert out["finish_reasons"] == (["stop_words"] if len(generated) < 12 else ["length"])


def test_logit_bias_equals_huggingface_sequence_bias(runners):
    """logit_bias as HF's sequence_bias on single tokens: one token banned, another favoured."""
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (12,), seed=9)[0]
    expected = hf_greedy(model, p, 10)
    bias = {expected[0]: -100.0, expected[3]: 3.0}
    with torch.no_grad():
        hf = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                            sequence_bias={(t,): b for t, b in bias.items()},
                            pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
    assert hf[0] != expected[0] and hf != expected
    out = runner.generate([p], max_new_tokens=10, end_id=-1, logit_bias=bias, return_dict=True)
    assert out["output_ids"][0, 0, len(p):].tolist() == hf
    plain = runner.generate([p], max_new_tokens=10, end_id=-1, return_dict=True)
    assert plain["output_ids"][0, 0, len(p):].tolist() == expected


def test_allowed_token_ids_equal_huggingface_prefix_allowed_tokens(runners):
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (10,), seed=11)[0]
    expected = hf_greedy(model, p, 8)
    allowed = sorted({expected[1], expected[5], 7, 99} - {expected[0]})
    with torch.no_grad():
        hf = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False,
                            prefix_allowed_tokens_fn=lambda batch, ids: allowed,
                            pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
    assert set(hf) <= set(allowed) and hf != expected
    out = runner.generate([p], max_new_tokens=8, end_id=-1, allowed_token_ids=allowed,
                          return_dict=True)
    assert out["output_ids"][0, 0, len(p):].tolist() == hf


def test_top_log_probs_are_the_model_s_most_likely_tokens(runners):
    """top_log_probs: per generated token, the k most likely tokens and their log-softmax of
    HF's logits (greedy: the first is the token picked)."""
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (9,), seed=13)[0]
    out = runner.generate([p], max_new_tokens=5, end_id=-1, output_log_probs=True,
                          top_log_probs=4, return_dict=True)
    tokens = out["output_ids"][0, 0, len(p):].tolist()
    assert len(out["top_log_probs"][0]) == 5
    with torch.no_grad():
        logits = model(torch.tensor([p + tokens])).logits[0, len(p) - 1: -1].float()
    want = torch.log_softmax(logits, dim=-1).topk(4)
    for i, top in enumerate(out["top_log_probs"][0]):
        assert [t for t, _ in top] == want.indices[i].tolist()
        assert [lp for _, lp in top] == pytest.approx(want.values[i].tolist(), abs=1e-4)
        assert top[0][0] == tokens[i] and top[0][1] == pytest.approx(out["log_probs"][0][i])
    plain = runner.generate([p], max_new_tokens=5, end_id=-1, return_dict=True)
    assert plain["top_log_probs"] is None and plain["output_ids"][0, 0, len(p):].tolist() == tokens


def test_prompt_log_probs_equal_huggingface_s_log_softmax(runners):
    """prompt_log_probs: each prompt token after the first scored by HF's log-softmax of the
    logits before it, with the k most likely tokens there; the generated tokens unchanged,
    also for a prompt the prefix cache holds (it is computed again, a token a step)."""
    runner, model = runners("qwen3")
    batch = prompts(runner.vocab_size, (11, 1, 14), seed=23)
    batch[2][:8] = batch[0][:8]  # a shared prefix, cached by the first
    plain = runner.generate(batch, max_new_tokens=4, end_id=-1, return_dict=True)
    out = runner.generate(batch, max_new_tokens=4, end_id=-1, prompt_log_probs=3,
                          return_dict=True)
    assert torch.equal(out["output_ids"], plain["output_ids"])
    assert plain["prompt_log_probs"] is None and plain["prompt_top_log_probs"] is None
    for p, lps, tops in zip(batch, out["prompt_log_probs"], out["prompt_top_log_probs"]):
        assert len(lps) == len(tops) == len(p) - 1
        if len(p) == 1:
            continue
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([p])).logits[0, :-1].double(), -1)
        assert lps == pytest.approx(want.gather(1, torch.tensor(p[1:])[:, None])[:, 0].tolist(),
                                    abs=1e-4)
        best = want.topk(3)
        for i, top in enumerate(tops):
            assert [t for t, _ in top] == best.indices[i].tolist()
            assert [lp for _, lp in top] == pytest.approx(best.values[i].tolist(), abs=1e-4)
    only = runner.generate([batch[0]], max_new_tokens=1, end_id=-1, prompt_log_probs=0,
                           return_dict=True)
    assert only["prompt_log_probs"][0] == pytest.approx(out["prompt_log_probs"][0], abs=1e-5)
    assert only["prompt_top_log_probs"] is None
    with pytest.raises(KilnError, match="prompt_log_probs is 21 but must be in"):
        runner.generate([batch[0]], max_new_tokens=1, prompt_log_probs=21)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_beam_search_equals_huggingface(runners, arch):
    """num_beams: the beams of HF's generate(num_beams=W, num_return_sequences=W,
    do_sample=False), best first, for early stopping True, False and "never" and two length
    penalties, with an end id the search meets; each beam's cum_log_prob is the sum of HF's
    log-softmax along it."""
    runner, model = runners(arch)
    batch = prompts(runner.vocab_size, (6, 11), seed=29)
    free = runner.generate(batch, max_new_tokens=4, end_id=-1, num_beams=3)
    eos = pad = int(free[0, 0, len(batch[0]) + 2])  # the best beam's third token; HF pads with it
    cases = [(3, True, 1.0), (4, False, 1.0), (2, "never", 0.7), (3, True, 2.0)]
    ended = 0  # beams that ended on the end id
    for width, stopping, penalty in cases:
        out = runner.generate(batch, max_new_tokens=7, end_id=eos, pad_id=pad, num_beams=width,
                              early_stopping=stopping, length_penalty=penalty, return_dict=True,
                              output_log_probs=True)
        assert out["output_ids"].shape[:2] == (2, width)
        for i, p in enumerate(batch):
            with torch.no_grad():
                hf = model.generate(torch.tensor([p]), max_new_tokens=7, num_beams=width,
                                    num_return_sequences=width, do_sample=False,
                                    early_stopping=stopping, length_penalty=penalty,
                                    eos_token_id=eos, pad_token_id=pad)
            ours = out["output_ids"][i]
            assert torch.equal(ours[:, : hf.shape[1]].long(), hf), (width, stopping, penalty, i)
            assert (ours[:, hf.shape[1]:] == pad).all()
            for b in range(width):
                seq = ours[b, : out["sequence_lengths"][i, b]].tolist()
                ended += seq[-1] == eos and len(seq) < len(p) + 7
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, len(p) - 1: -1]
                                           .double(), -1)
                want = lp.gather(1, torch.tensor(seq[len(p):])[:, None])[:, 0]
                assert out["cum_log_probs"][i][b] == pytest.approx(want.sum().item(), abs=1e-4)
                assert out["log_probs"][i][b] == pytest.approx(want.tolist(), abs=1e-4)
    assert ended >= 1


def test_beam_search_refusals(runners):
    runner, _ = runners("llama")
    p = prompts(runner.vocab_size, (5,), seed=2)[0]
    with pytest.raises(KilnError, match="does not combine with sampling"):
        runner.generate([p], max_new_tokens=3, num_beams=2, temperature=0.8, top_k=0)
    with pytest.raises(KilnError, match="beam_width is 11 but must be in"):
        runner.generate([p], max_new_tokens=3, num_beams=11)
    with pytest.raises(KilnError, match="early_stopping must be 1"):
        runner.generate([p], max_new_tokens=3, num_beams=2, early_stopping="sometimes")


def test_bad_words_equal_huggingface_bad_words_ids(runners):
    """bad_words_list (TensorRT-LLM's) as HF's bad_words_ids: a one-token word never appears;
    a two-token word's second token is never picked right after its first."""
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (12,), seed=17)[0]
    expected = hf_greedy(model, p, 10)
    bad = [[expected[1]], [expected[3], expected[4]]]
    with torch.no_grad():
        hf = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                            bad_words_ids=bad, pad_token_id=0, eos_token_id=None)[0, len(p):]
    hf = hf.tolist()
    assert expected[1] not in hf and hf != expected
    out = runner.generate([p], max_new_tokens=10, end_id=-1, bad_words_list=bad, return_dict=True)
    assert out["output_ids"][0, 0, len(p):].tolist() == hf


def test_seeded_sampling_is_reproducible(runners):
    runner, _ = runners("qwen3")
    batch = prompts(runner.vocab_size, (6, 6), seed=8)
    kw = dict(max_new_tokens=16, end_id=-1, temperature=1.3, top_k=50, top_p=0.95, min_p=0.01,
              repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.1)
    a = runner.generate(batch, random_seed=1234, **kw)
    b = runner.generate(batch, random_seed=1234, **kw)
    c = runner.generate(batch, random_seed=99, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # any integer seeds, taken modulo 2**64: -1 is 2**64 - 1
    assert torch.equal(runner.generate(batch, random_seed=-1, **kw),
                       runner.generate(batch, random_seed=(1 << 64) - 1, **kw))
    assert torch.equal(runner.generate(batch, random_seed=1234 + (5 << 64), **kw), a)
    # numpy and 0-d torch values are taken as the Python numbers they hold
    kw_np = kw | dict(temperature=np.float32(1.3), top_k=np.int64(50))
    assert torch.equal(runner.generate(batch, random_seed=torch.tensor(1234), **kw_np), a)
    with pytest.raises(KilnError, match="random_seed must be an integer, got 1.5"):
        runner.generate(batch, random_seed=1.5, **kw)


def test_log_probs_returned(runners):
    runner, model = runners("llama")
    p = prompts(runner.vocab_size, (10,), seed=3)[0]
    out = runner.generate([p], max_new_tokens=3, end_id=-1, output_log_probs=True, return_dict=True)
    ids = out["output_ids"][0, 0].tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expect = [torch.log_softmax(logits[len(p) - 1 + k], -1)[ids[len(p) + k]].item() for k in range(3)]
    assert out["log_probs"][0] == pytest.approx(expect, abs=1e-4)


def test_eight_threads_enqueue_at_once(runners):
    runner, model = runners("qwen2")
    batch = prompts(runner.vocab_size, [5 + 3 * i for i in range(8)], seed=12)
    expected = [hf_greedy(model, p, 6) for p in batch]
    results, start = [None] * 8, threading.Barrier(8)

    def go(i):
        start.wait()
        results[i] = runner.generate([batch[i]], max_new_tokens=6, end_id=-1)[0, 0].tolist()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [p + e for p, e in zip(batch, expected)]


@pytest.mark.parametrize("bad, message", [
    (dict(batch=[[]]), "empty"),
    (dict(batch=[[5] * 200]), "max_seq_len"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(batch=[[5, 100000]]), "vocab"),
    (dict(batch=[[5, 2.0]]), "prompt 0 has 2.0 at position 1; token ids are integers"),
    (dict(batch=[[5, True]]), "prompt 0 has True at position 1; token ids are integers"),
    (dict(batch=[[5, 6], "text"]), "prompt 1 is a string among token-id prompts"),
    (dict(batch=[[5, 6], 7]), "prompt 1 is a int; pass a list of token ids"),
    (dict(temperature=-1.0, top_k=0), "temperature"),
    (dict(temperature=-1.0), "temperature"),  # with the default top_k=1 (greedy) too
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=0.0, top_k=-3), "top_k"),
    (dict(top_p=1.5, top_k=0), "top_p"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer, got 2.5"),
    (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
    (dict(stop_words_list=5), "stop_words_list must be a list of stop words"),
    (dict(stop_words_list=[3.5]), "stop word 3.5 is neither a string nor a list of token ids"),
    (dict(min_tokens=5), "min_tokens is 5 but max_new_tokens is 4"),
    (dict(min_tokens=1.5), "min_tokens must be an integer"),
    (dict(logit_bias={5: 101}), r"logit_bias\[5\] is 101 but must be in \[-100, 100\]"),
    (dict(logit_bias={100000: 1}), "logit_bias has token id 100000, outside the vocabulary"),
    (dict(logit_bias={"a": 1}), "logit_bias key 'a' is not a token id"),
    (dict(logit_bias=[5]), "logit_bias must be a dict"),
    (dict(allowed_token_ids=[]), "allowed_token_ids is empty"),
    (dict(allowed_token_ids=[3, 100000]), "allowed_token_ids has token id 100000, outside"),
    (dict(allowed_token_ids="abc"), "allowed_token_ids must be a list of token ids"),
    (dict(top_log_probs=3), "num_top_log_probs is 3 but return_log_probs is false"),
    (dict(bad_words_list=5), "bad_words_list must be a list of bad words"),
    (dict(bad_words_list=[[3, 100000]]), r"bad_words\[0\]\[1\] is 100000, outside the vocabulary"),
    (dict(top_log_probs=21, output_log_probs=True), r"num_top_log_probs is 21 but must be in \[0, 20\]"),
])
def test_bad_requests_fail_alone(runners, bad, message):
    runner, model = runners("llama")
    good = prompts(runner.vocab_size, (14,), seed=21)[0]
    expected = hf_greedy(model, good, 20)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=runner.generate([good], max_new_tokens=20, end_id=-1)))
    worker.start()
    kw = dict(max_new_tokens=4, end_id=-1) | {k: v for k, v in bad.items() if k != "batch"}
    with pytest.raises(KilnError, match=message):
        runner.generate(bad.get("batch", [[1, 2, 3]]), **kw)
    worker.join()
    assert result["out"][0, 0].tolist() == good + expected
    assert runner.kv_cache_stats()["used_blocks"] == 0


def test_shutdown_ends_requests_in_flight_and_refuses_new_ones(tiny_engine):
    """shutdown() with a request in flight ends it (cancelled, the tokens so far kept) rather
    than leave its caller waiting; a request after shutdown is refused at once."""
    _, engine = tiny_engine("llama")
    runner = ModelRunner.from_dir(engine, device="cpu")
    forward = runner.backend.forward

    def slow(step):  # keeps the request running while shutdown() comes
        threading.Event().wait(0.01)
        return forward(step)

    runner.backend.forward = slow
    result = {}

    def call(name, **kw):
        try:
            result[name] = runner.generate([[5, 6, 7]], end_id=-1, return_dict=True, **kw)
        except BaseException as e:  # noqa: BLE001  checked below
            result[name] = e

    worker = threading.Thread(target=call, args=("in_flight",), kwargs=dict(max_new_tokens=100),
                              daemon=True)
    worker.start()
    for _ in range(500):
        if runner.kv_cache_stats()["used_blocks"] > 0:
            break
        threading.Event().wait(0.01)
    runner.shutdown()
    worker.join(timeout=60)
    assert not worker.is_alive(), "generate() still waits after shutdown()"
    out = result["in_flight"]
    assert out["finish_reasons"] == ["cancelled"], out
    assert 3 < int(out["sequence_lengths"][0, 0]) < 3 + 100
    late = threading.Thread(target=call, args=("late",), kwargs=dict(max_new_tokens=4),
                            daemon=True)
    late.start()
    late.join(timeout=60)
    assert not late.is_alive(), "generate() after shutdown() waits forever"
    assert isinstance(result["late"], KilnError) and "shut down" in str(result["late"])


def test_exit_with_a_request_in_flight_stops_every_thread_first(tiny_engine):
    """A process that exits with a request still running (here an abandoned stream) stops the
    runner's threads in its exit hooks, while the interpreter still runs, and exits with status
    0. A thread left running into the interpreter's finalization is stopped when it next takes
    the GIL; the router's, coming back from await_responses through C++ that retakes the GIL,
    then aborts the process ("terminate called without an active exception") in about one exit
    of five."""
    _, engine = tiny_engine("llama")
    script = textwrap.dedent(f"""
        import atexit
        from kiln.runtime import ModelRunner

        runner = ModelRunner.from_dir({str(engine)!r}, device="cpu")
        stream = runner.generate([[5, 6, 7]], max_new_tokens=100, streaming=True)
        next(stream)
        atexit._run_exitfuncs()  # the hooks the interpreter runs first when it exits
        print("router thread alive:", runner.router._thread.is_alive())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert (done.returncode, done.stdout.strip()) == (0, "router thread alive: False"), (
        done.stdout + done.stderr[-2000:])


def test_strings_in_text_out(runners):
    runner, _ = runners("llama")
    texts = runner.generate(["the object", "a function"], max_new_tokens=5, end_id=-1)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    ids = runner.tokenizer.encode("the object")
    direct = runner.generate([ids], max_new_tokens=5, end_id=-1)[0, 0, len(ids):].tolist()
    assert texts[0] == runner.tokenizer.decode(direct)


def test_refused_engine_directory(tmp_path):
    with pytest.raises(KilnError, match="does not exist; build one with engine-build"):
        ModelRunner.from_dir(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(KilnError, match="config.json is missing"):
        ModelRunner.from_dir(tmp_path / "e")
    hf = make_tiny_checkpoint("llama", tmp_path / "hf")
    with pytest.raises(KilnError, match=f"^{hf} is a HuggingFace checkpoint, not a Kiln engine; "
                                        f"build one from it with engine-build --checkpoint {hf}$"):
        ModelRunner.from_dir(hf)


def test_smollm2_greedy_equals_huggingface(smollm2):
    engine_dir, model, tokenizer = smollm2
    texts = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of"]
    batch = [tokenizer(t)["input_ids"] for t in texts]
    with ModelRunner.from_dir(engine_dir, device="cpu") as runner:
        out = runner.generate(batch, max_new_tokens=20, end_id=-1, return_dict=True)
    for i, p in enumerate(batch):
        assert out["output_ids"][i, 0, : len(p) + 20].tolist() == p + hf_greedy(model, p, 20)
