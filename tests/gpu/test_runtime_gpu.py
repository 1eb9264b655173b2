"""The runtime on the GPU backend: inflight batching, a request that can never fit, mixed
traffic under preemption, and an engine built on a machine with no GPU."""
import os
import threading
from pathlib import Path

import pytest
import torch
import transformers

from kiln.builder.errors import KilnError
from kiln.runtime import ModelRunner
from kiln_testing import hf_greedy, mixed_traffic

pytestmark = pytest.mark.gpu


def prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 320, (n,), generator=g).tolist() for n in lengths]


def test_inflight_batching_gives_the_tokens_of_running_alone(core, sm, tiny_engine):
    _, path = tiny_engine("qwen3", "float32", targets=(sm,))
    batch = prompts((11, 23, 6, 40, 15, 8), seed=5)
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=4096) as runner:
        alone = [runner.generate([p], max_new_tokens=16, end_id=-1)[0, 0].tolist() for p in batch]
        results = [None] * len(batch)

        def go(i):
            results[i] = runner.generate([batch[i]], max_new_tokens=16, end_id=-1)[0, 0].tolist()

        threads = []
        for i in range(len(batch)):  # each arrives while the earlier ones decode
            threads.append(threading.Thread(target=go, args=(i,)))
            threads[-1].start()
            threading.Event().wait(0.005)
        for t in threads:
            t.join()
    assert results == alone


def test_request_that_never_fits_the_pool_fails_alone(core, sm, tiny_engine):
    ckpt, path = tiny_engine("llama", "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    good = prompts((10,), seed=3)[0]
    # 16 blocks of 4 tokens: 64 tokens of KV in all.
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=64) as runner:
        result = {}
        worker = threading.Thread(target=lambda: result.update(
            out=runner.generate([good], max_new_tokens=20, end_id=-1)))
        worker.start()
        with pytest.raises(KilnError, match="request 0 of the batch failed"):
            runner.generate([prompts((60,), seed=4)[0]], max_new_tokens=40, end_id=-1)
        worker.join()
        assert result["out"][0, 0].tolist() == good + hf_greedy(model, good, 20)
        assert runner.kv_cache_stats()["used_blocks"] == 0


def test_min_tokens_and_logit_bias_equal_huggingface_beside_plain_greedy(core, sm, tiny_engine):
    """A request short of its min_tokens has its logits sampled on the host with end_id held
    back (HF's min_new_tokens), one with a logit bias too (HF's sequence_bias), while a plain
    greedy request in the same steps takes the GPU's pick."""
    ckpt, path = tiny_engine("llama", "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    p, other = prompts((12, 9), seed=8)
    end = hf_greedy(model, p, 12)[2]
    with torch.no_grad():
        hf = model.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=6,
                            do_sample=False, eos_token_id=end, pad_token_id=end)[0, len(p):]
        bias = {end: -100.0, hf_greedy(model, other, 4)[3]: 4.0}
        biased = model.generate(torch.tensor([other]), max_new_tokens=10, do_sample=False,
                                sequence_bias={(t,): b for t, b in bias.items()},
                                pad_token_id=0, eos_token_id=None)[0, len(other):].tolist()
    assert biased != hf_greedy(model, other, 10)
    hf = hf.tolist()
    hf = hf[: hf.index(end) + 1] if end in hf else hf
    assert end not in hf[:6]
    with ModelRunner.from_dir(path, device="cuda") as runner:
        result = {}
        workers = [threading.Thread(target=lambda: result.update(
                       plain=runner.generate([other], max_new_tokens=24, end_id=-1))),
                   threading.Thread(target=lambda: result.update(
                       biased=runner.generate([other], max_new_tokens=10, end_id=-1,
                                              logit_bias=bias)))]
        for w in workers:
            w.start()
        out = runner.generate([p], max_new_tokens=12, end_id=end, min_tokens=6, return_dict=True)
        for w in workers:
            w.join()
        assert runner.kv_cache_stats()["used_blocks"] == 0
    assert out["output_ids"][0, 0, len(p): out["sequence_lengths"][0, 0]].tolist() == hf
    assert result["plain"][0, 0].tolist() == other + hf_greedy(model, other, 24)
    assert result["biased"][0, 0].tolist() == other + biased


def test_host_sampled_options_equal_the_reference_backend(core, sm, tiny_engine):
    """Requests the host samples from the GPU's logits rows (allowed tokens, bad words, top
    log-probabilities, a logit bias, a JSON object, a JSON schema) give the CPU reference
    backend's tokens, and
    the same log-probabilities, with plain greedy requests beside them."""
    _, path = tiny_engine("llama", "float32", targets=(sm,))
    p, q = prompts((11, 7), seed=12)
    options = [dict(top_log_probs=4, output_log_probs=True),
               dict(allowed_token_ids=list(range(40, 80)), output_log_probs=True),
               dict(bad_words_list=[[p[-1]], [5, 6]], logit_bias={7: 3.0}),
               dict(json_object=True, output_log_probs=True),
               dict(json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}},
                                 "required": ["ok"]}),
               dict()]

    def run(device):
        with ModelRunner.from_dir(path, device=device) as runner:
            out = [runner.generate([p, q], max_new_tokens=10, end_id=-1, return_dict=True, **o)
                   for o in options]
            assert runner.kv_cache_stats()["used_blocks"] == 0
        return out

    for gpu, cpu in zip(run("cuda"), run("cpu")):
        assert gpu["output_ids"].tolist() == cpu["output_ids"].tolist()
        if cpu["log_probs"] is None:
            assert gpu["log_probs"] is None
        else:
            for g, c in zip(gpu["log_probs"], cpu["log_probs"]):
                assert g == pytest.approx(c, abs=1e-4)
        if cpu["top_log_probs"] is None:
            assert gpu["top_log_probs"] is None
        else:
            for g, c in zip(gpu["top_log_probs"], cpu["top_log_probs"]):
                assert [[t for t, _ in step] for step in g] == [[t for t, _ in step] for step in c]
                assert [v for step in g for _, v in step] == pytest.approx(
                    [v for step in c for _, v in step], abs=1e-4)


def test_mixed_traffic_under_preemption_loses_nothing_and_leaks_no_block(core, sm, tiny_engine):
    """kiln_testing.mixed_traffic on the plan executor, CUDA graphs on (tests/runtime: the CPU)."""
    ckpt, path = tiny_engine("llama", "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=96) as runner:
        mixed_traffic(runner, model)


def test_engine_built_on_a_cpu_only_machine_runs():
    """KILN_CPU_BUILT_ENGINE names a folder with `hf/` (a tiny checkpoint) and `engine/` (built
    from it on a machine with no GPU, cubins from that machine's Triton)."""
    where = os.environ.get("KILN_CPU_BUILT_ENGINE")
    if not where or not torch.cuda.is_available():
        pytest.skip("set KILN_CPU_BUILT_ENGINE to an engine built on a CPU-only machine")
    root = Path(where)
    model = transformers.AutoModelForCausalLM.from_pretrained(root / "hf", dtype=torch.float32).eval()
    batch = prompts((9, 21), seed=6)
    with ModelRunner.from_dir(root / "engine", device="cuda") as runner:
        out = runner.generate(batch, max_new_tokens=12, end_id=-1, return_dict=True)
    for i, p in enumerate(batch):
        assert out["output_ids"][i, 0, : len(p) + 12].tolist() == p + hf_greedy(model, p, 12)


def test_batch_of_hundreds_gives_the_tokens_of_small_batches(core, sm, tiny_engine):
    """An engine built for 640 sequences (engine-bench build picks batches that large for
    throughput runs): 600 requests at once, decode steps of up to 600 rows as CUDA graphs of
    buckets past 512, give the tokens the same requests give 8 at a time."""
    _, path = tiny_engine("llama", "float32", targets=(sm,), max_batch_size=640,
                          max_num_tokens=2048, max_seq_len=64, tokens_per_block=16)
    batch = prompts([7 + i % 13 for i in range(600)], seed=11)
    with ModelRunner.from_dir(path, device="cuda") as runner:
        wide = runner.generate(batch, max_new_tokens=10, end_id=-1, return_dict=True)
        assert runner.kv_cache_stats()["used_blocks"] == 0
    with ModelRunner.from_dir(path, device="cuda", max_batch_size=8) as runner:
        narrow = runner.generate(batch, max_new_tokens=10, end_id=-1, return_dict=True)
    assert (wide["sequence_lengths"] == narrow["sequence_lengths"]).all()
    assert (wide["output_ids"] == narrow["output_ids"]).all()


def test_a_throughput_run_s_steps_by_kernel(core, sm, tiny_engine):
    """engine-bench's --profile-steps on the GPU: CUPTI sees the kernels the executor's thread
    launches, the GPU is busy no longer than the steps took, and the run's tokens are whole; the
    trace starts and stops with the executor held (CUPTI attaching while the executor's thread
    launches, or a synchronisation while it captures a graph, would fail)."""
    from kiln.runtime.bench.dataset import LengthDist, synthetic
    from kiln.runtime.bench.step_profile import StepProfiler, Window
    from kiln.runtime.bench.throughput import run_throughput

    _, path = tiny_engine("llama", "float32", targets=(sm,))
    requests = synthetic(8, LengthDist(12, 3), LengthDist(40, 4), vocab_size=320, seed=7)
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=4096) as runner:
        run = run_throughput(runner, requests,
                             profiler=StepProfiler(Window(4, 10), backend=runner.backend)).to_json()
    assert run["metrics"]["total_output_tokens"] == sum(r.output_tokens for r in requests)
    # The backend's host time by part, over the run and over the window: every step is either
    # kind, each part is measured, and the executor's work beside the launches ran once a step.
    host = run["host"]
    assert sum(kind["steps"] for kind in host.values()) == run["steps"]["total"], host
    for kind in host.values():
        assert all(kind[key] >= 0 for key in kind) and kind["wait_us"] > 0, host
        assert kind["beside_us"] > 0, host
    p = run["profile"]
    assert p["steps"] >= 1 and p["first_step"] >= 4, p
    names = [k["name"] for k in p["kernels"]]
    assert any("decode" in n for n in names), names
    # Whole steps: the trace starts and stops with the executor held between two.
    assert 0 < p["busy_ms"] <= p["step_ms"] * 1.05, p
    assert p["held_ms"] > 0, p
    assert sum(k["us"] for k in p["kernels"]) > 0
    window = p["host"]
    assert sum(kind["steps"] for kind in window.values()) == p["steps"], (window, p["steps"])
    # The executor's own work beside the launches is the executor's, not the backend's time.
    parts_ms = sum(kind["steps"] * sum(v for k, v in kind.items() if k not in ("steps", "beside_us"))
                   for kind in window.values()) / p["steps"] / 1e3
    assert parts_ms <= p["forward_ms"] * 1.01 + 0.01, (window, p)
    # The device's idle gaps, named by the kernels and copies around them (between steps too).
    assert p["gaps"] and all(g["us"] > 0 and g["count"] > 0 for g in p["gaps"]), p["gaps"]
    assert {g["after"] for g in p["gaps"]} <= {k["name"] for k in p["kernels"]}, p["gaps"]
