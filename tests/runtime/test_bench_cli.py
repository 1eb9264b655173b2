"""engine-bench throughput and latency end to end on a tiny CPU engine, with the HF baseline."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from click.testing import CliRunner

from kiln.runtime.bench.cli import bench_main
from kiln.runtime.bench.dataset import LengthDist, synthetic, write_jsonl
from kiln.runtime.bench.report import SCHEMA


@pytest.fixture(scope="module")
def setup(tiny_engine, tmp_path_factory):
    _, engine = tiny_engine("llama")
    root = tmp_path_factory.mktemp("bench")
    requests = synthetic(10, LengthDist(12, 4), LengthDist(6, 2), vocab_size=320, seed=0)
    write_jsonl(root / "d.jsonl", requests)
    return engine, root, requests


def invoke(*args):
    return CliRunner().invoke(bench_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def sweep(setup):
    engine, root, requests = setup
    result = invoke("throughput", "--engine", engine, "--dataset", root / "d.jsonl", "--device", "cpu",
                    "--concurrency", "1,3", "--warmup", "1", "--baseline", "hf",
                    "--baseline-max-requests", "5", "--baseline-batch-size", "2",
                    "--json", root / "t.json", "--plot", root / "t.png")
    assert result.exit_code == 0, result.output
    return result, json.loads((root / "t.json").read_text())


def test_throughput_sweep_report(setup, sweep):
    _, _, requests = setup
    result, doc = sweep
    jsonschema.validate(doc, SCHEMA)
    assert doc["command"] == "throughput" and doc["env"]["device"] == "cpu"
    assert doc["dataset"]["num_requests"] == 10
    assert doc["dataset"]["total_output_tokens"] == sum(r.output_tokens for r in requests)
    one, three = doc["runs"]
    assert one["load"] == {"description": "concurrency 1", "concurrency": 1, "request_rate": None}
    assert three["load"]["concurrency"] == 3
    for run in (one, three):  # every output reached its target length
        assert run["metrics"]["num_requests"] == 10
        assert run["metrics"]["total_output_tokens"] == sum(r.output_tokens for r in requests)
        assert run["kv_cache"]["tokens_per_block"] == 4 and run["preemptions"] == 0
        assert 0 < run["kv_cache"]["peak_used_blocks"] <= run["kv_cache"]["total_blocks"]
        steps = run["steps"]
        assert 0 < steps["seen"] <= steps["total"]
        # Exact over the run's steps (the warm-up's excluded): every prompt token in a prompt
        # step, every output token but each request's first in a decode token.
        prompt, decode = steps["with_prompt"], steps["decode_only"]
        assert prompt["count"] + decode["count"] == steps["total"] and prompt["count"] >= 1
        assert prompt["prompt_tokens_mean"] * prompt["count"] == sum(r.input_len for r in requests)
        outputs = sum(r.output_tokens for r in requests)
        assert steps["decode_tokens_mean"] * steps["total"] == pytest.approx(outputs - 10)
        assert 0 < steps["forward_share"] <= 1 and steps["step_s"] > 0
        assert run["graphs"] is None  # the CPU backend runs no CUDA graphs
    assert one["peak_batch"] == 1 and one["peak_running"] == 1
    assert 1 <= three["peak_batch"] <= 3 and three["peak_running"] <= 3
    base = doc["baseline"]
    assert (base["num_requests"], base["batch_size"], base["weights"]) == (5, 2, "the engine's weights")
    assert base["metrics"]["total_output_tokens"] == sum(r.output_tokens for r in requests[:5])
    best = max(doc["runs"], key=lambda r: r["metrics"]["output_tokens_per_s"])["metrics"]
    assert base["ratio"]["output_tokens_per_s"] == best["output_tokens_per_s"] / base["metrics"]["output_tokens_per_s"]
    # The run's own limits: the engine's, unless capped on the command line.
    assert doc["runtime"] == {"max_batch_size": doc["engine"]["max_batch_size"],
                              "max_num_tokens": doc["engine"]["max_num_tokens"],
                              "kv_cache_free_gpu_memory_fraction": 0.9,
                              "capacity_scheduler_policy": "max_utilization",
                              "kv_cache_reuse": False, "fp8_fast_accumulation": False,
                              "kernels_from_rows": None}
    roof = doc["roofline"]
    assert roof["fraction"] == roof["kiln_tokens_per_s"] / roof["tokens_per_s"]
    assert "host memcpy" in roof["bandwidth"]["method"]
    # One request at a time: its decode-only steps attend to L + 1, ..., L + O - 1 keys.
    decode = one["steps"]["decode_only"]
    keys = sum(r.input_len + i for r in requests for i in range(1, r.output_tokens))
    assert decode["context_tokens_mean"] * decode["count"] == pytest.approx(keys)
    from kiln.builder.engine import load_engine
    from kiln.runtime.bench.tuning import kv_bytes_per_token
    config = load_engine(setup[0]).config
    kv = kv_bytes_per_token(config.model, config.build.dtype, config.build.kv_cache_dtype)
    assert decode["memory_floor_ms"] == pytest.approx(
        1e3 * (roof["bytes_per_token"] + kv * decode["context_tokens_mean"])
        / roof["bandwidth"]["bytes_per_s"])
    # One request at a time: its prompt step reads L keys and scores L (L + 1) / 2 pairs, with
    # no decode beside it; each kind of step at its floor (compute.set_step_floors, tested on
    # its own), from the matmul rate measured in the run.
    from kiln.runtime.bench.compute import MatmulRate, graph_step_flops, set_step_floors
    prompt = one["steps"]["with_prompt"]
    assert prompt["prompt_attention_pairs_mean"] * prompt["count"] == sum(
        r.input_len * (r.input_len + 1) // 2 for r in requests)
    assert prompt["prompt_context_tokens_mean"] * prompt["count"] == sum(r.input_len for r in requests)
    assert prompt["decode_tokens_mean"] == prompt["decode_context_tokens_mean"] == 0
    assert decode["decode_tokens_mean"] == 1 and prompt["sequences_mean"] == 1
    rate = doc["matmul_rate"]
    assert rate["dtype"] == "float32" and "matmul on the CPU" in rate["method"]
    engine = load_engine(setup[0])
    flops = graph_step_flops(engine.graph)
    assert decode["tflop_mean"] * 1e12 == pytest.approx(flops.of(1, 1, decode["context_tokens_mean"]))
    again = {k: {key: v for key, v in one["steps"][k].items()
                 if key not in ("tflop_mean", "floor_ms", "floor_parts")}
             for k in ("with_prompt", "decode_only")}
    set_step_floors(again, engine.graph, roof["bytes_per_token"], kv,
                    roof["bandwidth"]["bytes_per_s"], MatmulRate(**rate))
    for k in ("with_prompt", "decode_only"):
        assert one["steps"][k]["floor_ms"] == pytest.approx(again[k]["floor_ms"])
        assert one["steps"][k]["floor_parts"].keys() == again[k]["floor_parts"].keys()
    out = result.stdout
    for text in ("Kiln — concurrency 1", "Kiln — concurrency 3", "peak batch 1 ·",
                 "HuggingFace — transformers generate, static batches of up to 2, longest first; "
                 "the engine's weights (5 of 10 requests)", "Kiln/HF (best Kiln run): requests/s",
                 "TTFT ms", "ITL ms", "E2E ms", "roofline (batch-1 decode):", "dataset  10 requests",
                 "with prompt tokens (", "decode tokens a step; the backend",
                 "steps with prompt tokens: ", "decode-only steps: ", "FLOP a step; floor ",
                 "(GEMMs ", " ms memory-bound", "decode attention ", "prompt attention ",
                 "ms they took",
                 "matmul rate (the steps' floors):",
                 "max_utilization · prefix caching off"):
        assert text in out, text


def test_without_a_matmul_rate_the_decode_steps_meet_their_memory_floor(sweep):
    """An engine whose GEMM rate is not measured (int8_sq) still gets the decode-only steps'
    memory floor line."""
    from kiln.runtime.bench.report import render
    _, doc = sweep
    doc = copy.deepcopy(doc)
    doc["matmul_rate"] = None
    for run in doc["runs"]:
        for kind in run["steps"]["with_prompt"], run["steps"]["decode_only"]:
            for key in ("tflop_mean", "floor_ms", "floor_parts"):
                kind.pop(key)
    jsonschema.validate(doc, SCHEMA)
    out = render(doc)
    assert "decode-only steps attend to" in out and "ms at the copy bandwidth," in out
    assert "floor " not in out and "matmul rate" not in out


def test_plot_is_written(setup, sweep):
    _, root, _ = setup
    data = (root / "t.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_schema_is_not_vacuous(sweep):
    _, doc = sweep
    for breaks in (lambda d: d.pop("runs"), lambda d: d["runs"][0]["metrics"].pop("ttft_ms"),
                   lambda d: d["runs"][0]["kv_cache"].update(peak_fraction=1.5),
                   lambda d: d.update(schema="other/1"), lambda d: d["baseline"].pop("ratio"),
                   lambda d: d["runtime"].update(capacity_scheduler_policy="fifo")):
        broken = copy.deepcopy(doc)
        breaks(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_request_rate_to_stdout_json(setup):
    engine, root, _ = setup
    result = invoke("throughput", "--engine", engine, "--dataset", root / "d.jsonl", "--device", "cpu",
                    "--num-requests", "4", "--request-rate", "400", "--warmup", "0", "--json", "-",
                    "--capacity-scheduler-policy", "guaranteed_no_evict", "--max-batch-size", "2",
                    "--no-fp8-fast-accumulation")  # promoted: refused nowhere
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["runs"][0]["preemptions"] == 0 and doc["runs"][0]["peak_batch"] <= 2
    assert doc["runtime"]["max_batch_size"] == 2 < doc["engine"]["max_batch_size"]
    assert doc["runtime"]["capacity_scheduler_policy"] == "guaranteed_no_evict"
    jsonschema.validate(doc, SCHEMA)
    assert doc["runs"][0]["load"]["request_rate"] == 400.0 and doc["baseline"] is None
    assert doc["runs"][0]["metrics"]["num_requests"] == 4
    assert "Kiln — 400 requests/s (Poisson)" in result.stderr


def test_throughput_probe_times_its_requests_after_an_untimed_one(setup, monkeypatch):
    """The batch-1 probe set against the roofline sends one request first and times the next
    ones only: its decode rate never holds a first batch of one's GEMM timing and capture."""
    import kiln.runtime.bench.latency as latency
    from kiln.runtime.bench import cli

    engine, root, _ = setup
    sent, kept = [], []
    send, summarize = latency.run_throughput, latency.LatencyResult.of

    def counted_send(runner, requests, *args):
        sent.append(len(requests))
        return send(runner, requests, *args)

    def counted_summary(cls, timings, output_len):
        kept.append(len(timings))
        return summarize(timings, output_len)

    monkeypatch.setattr(latency, "run_throughput", counted_send)
    monkeypatch.setattr(latency.LatencyResult, "of", classmethod(counted_summary))
    result = invoke("throughput", "--engine", engine, "--dataset", root / "d.jsonl", "--device", "cpu",
                    "--num-requests", "3", "--warmup", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    assert sent == [1] * (cli.PROBE_WARMUP + cli.PROBE_ITERATIONS) and cli.PROBE_WARMUP >= 1
    assert kept == [cli.PROBE_ITERATIONS]


def test_latency_with_baseline(setup):
    engine, _, _ = setup
    result = invoke("latency", "--engine", engine, "--device", "cpu", "--input-len", "9",
                    "--output-len", "5", "--iterations", "2", "--baseline", "hf", "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    kiln, hf = doc["latency"]["kiln"], doc["latency"]["hf"]
    assert (kiln["input_len"], kiln["output_len"], kiln["iterations"]) == (9, 5, 2)
    assert hf["weights"] == "the engine's weights" and hf["iterations"] == 2
    assert doc["latency"]["ratio"]["decode_tokens_per_s"] == kiln["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
    assert doc["roofline"]["kiln_tokens_per_s"] == kiln["decode_tokens_per_s"]
    assert "batch 1 · input 9 · output 5 · 2 iterations" in result.stderr
    assert "HuggingFace generate" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "2,x"], "--concurrency takes integers separated by commas (e.g. 1,8,64), got '2,x'"),
    (["--concurrency", "0"], "--concurrency must be at least 1, got 0"),
    (["--num-requests", "0"], "--num-requests must be at least 1, got 0"),
    (["--baseline-max-requests", "4"], "--baseline-max-requests takes a positive count and applies "
                                        "with --baseline hf only"),
    (["--json", "/nonexistent/dir/t.json"], "--json /nonexistent/dir/t.json: its folder does not "
                                            "exist; create it or choose another path"),
    (["--json", "/"], "--json / is a folder; pass a file's path"),
    (["--profile-steps", "5"], "--profile-steps takes START:COUNT, a step of the run (0 its first) "
                               "and how many steps to profile from it (e.g. 100:10), got '5'"),
    (["--profile-steps", "0:4"], "--profile-steps records the GPU's kernels; this run is on cpu "
                                 "(use --device cuda on a machine with a GPU)"),
    (["--fp8-fast-accumulation"], "--fp8-fast-accumulation applies to the GPU's FP8 GEMMs; this run "
                                  "is on cpu (use --device cuda on a machine with a GPU)"),
    (["--kernels-from-rows", "4096"], "--kernels-from-rows chooses the GPU's GEMM kernels; this run is "
                                      "on cpu (use --device cuda on a machine with a GPU)"),
    (["--kernels-from-rows", "0"], "--kernels-from-rows chooses the GPU's GEMM kernels; this run is "
                                   "on cpu (use --device cuda on a machine with a GPU)"),
])
def test_throughput_refusals(setup, args, message):
    engine, root, _ = setup
    result = invoke("throughput", "--engine", engine, "--dataset", root / "d.jsonl", "--device", "cpu", *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {message}"


def test_dataset_too_long_for_the_engine(setup, tmp_path):
    engine, _, _ = setup
    write_jsonl(tmp_path / "long.jsonl", synthetic(2, LengthDist(100), LengthDist(40), 320))
    result = invoke("throughput", "--engine", engine, "--dataset", tmp_path / "long.jsonl", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: request 0 needs 100 + 40 tokens, more than the engine's "
                                     "max_seq_len 128; rebuild with a larger --max-seq-len or prepare "
                                     "shorter requests")
    result = invoke("latency", "--engine", engine, "--device", "cpu", "--input-len", "100", "--output-len", "40")
    assert result.stderr.strip().startswith("error: --input-len 100 + --output-len 40 exceeds")


def test_graph_counts_are_the_runs_own(setup):
    """A backend with CUDA graphs (the GPU's) has its counts over the run reported; the CPU
    backend has none."""
    from kiln.runtime import ModelRunner
    from kiln.runtime.bench import report
    from kiln.runtime.bench.throughput import run_throughput

    engine, _, requests = setup

    class Counting:
        seen = iter([{"captured": 1, "replays": 2, "eager_steps": 3, "capture_s": 0.5},
                     {"captured": 4, "replays": 10, "eager_steps": 5, "capture_s": 1.25}])

        def graph_stats(self):
            return next(self.seen)

    with ModelRunner.from_dir(engine, device="cpu") as runner:
        assert run_throughput(runner, requests[:2]).to_json()["graphs"] is None
        runner.backend = Counting()
        run = run_throughput(runner, requests[:3]).to_json()
    assert run["graphs"] == {"captured": 3, "replays": 8, "eager_steps": 2, "capture_s": 0.75}
    doc = {"schema": report.SCHEMA_ID, "command": "throughput", "date": "d",
           "env": {k: None for k in ("device", "device_name", "kiln", "torch", "transformers",
                                     "cuda", "python")},
           "engine": {"path": "e", "architecture": "a", "num_params": 1, "dtype": "float32",
                      "max_batch_size": 1, "max_num_tokens": 1, "max_seq_len": 1},
           "dataset": {"num_requests": 3, "input_len": {"mean": 1, "stdev": 0, "min": 1, "max": 1},
                       "output_len": {"mean": 1, "stdev": 0, "min": 1, "max": 1},
                       "total_input_tokens": 3, "total_output_tokens": 3},
           "runs": [run], "baseline": None,
           "roofline": {"weight_bytes": 1, "bytes_per_token": 1,
                        "bandwidth": {"bytes_per_s": 1.0, "method": "m", "buffer_bytes": 1},
                        "tokens_per_s": 1.0, "kiln_tokens_per_s": None, "fraction": None}}
    jsonschema.validate(doc, SCHEMA)
    assert ("CUDA graphs: 8 decode steps replayed, 3 captured (0.75 s of the host's), 2 steps "
            "launch by launch") in report.render(doc)


def test_runtime_line_says_how_the_gemm_kernels_were_chosen():
    """None (the engine's preferences) says nothing; 0 and a row count say what was asked."""
    from kiln.runtime.bench import report

    runtime = {"max_batch_size": 8, "max_num_tokens": 64, "kv_cache_free_gpu_memory_fraction": 0.9,
               "capacity_scheduler_policy": "max_utilization", "kv_cache_reuse": False,
               "fp8_fast_accumulation": False}
    lines = {rows: report._runtime_line(dict(runtime, kernels_from_rows=rows)) for rows in (None, 0, 4096)}
    assert lines[None].endswith("prefix caching off")
    assert lines[0] == lines[None] + " · every GEMM choice timed"
    assert lines[4096] == lines[None] + " · Kiln's GEMM kernels from 4096 rows"
    for rows in (None, 0, 4096):
        jsonschema.validate(dict(runtime, kernels_from_rows=rows), SCHEMA["properties"]["runtime"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(runtime, kernels_from_rows=-1), SCHEMA["properties"]["runtime"])
