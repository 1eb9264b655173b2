"""engine-triton-repo: every config.pbtxt parses against Triton's ModelConfig schema with the
fields expected; the CLI writes the layout and refuses bad input in one line."""
from __future__ import annotations

import filecmp
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "triton_stub"))

from stub_server import data_type_name, model_config_pb2, parse_config  # noqa: E402

from kiln.builder.errors import KilnError  # noqa: E402
from kiln.runtime.triton import RepositoryOptions, write_repository  # noqa: E402
from kiln.runtime.triton.cli import triton_repo_main  # noqa: E402

TEMPLATES = Path(__file__).parents[2] / "runtime" / "triton" / "templates"


@pytest.fixture(scope="module")
def repo(tiny_engine, tmp_path_factory):
    _, engine = tiny_engine("llama")
    out = tmp_path_factory.mktemp("triton") / "repo"
    options = RepositoryOptions(name="tiny_llama", max_batch_size=4, max_num_tokens=32,
                                kv_cache_free_gpu_memory_fraction=0.5, enable_kv_cache_reuse=False,
                                device="cpu")
    return write_repository(engine, out, options), Path(engine).resolve()


def io(config, kind):
    if kind == "input":
        return {t.name: (data_type_name(t.data_type), list(t.dims), t.optional) for t in config.input}
    return {t.name: (data_type_name(t.data_type), list(t.dims), False) for t in config.output}


def params(config):
    return {k: v.string_value for k, v in config.parameters.items()}


def test_layout_and_model_files(repo):
    out, _ = repo
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "ensemble", "ensemble/1", "ensemble/config.pbtxt",
        "postprocessing", "postprocessing/1", "postprocessing/1/model.py", "postprocessing/config.pbtxt",
        "preprocessing", "preprocessing/1", "preprocessing/1/model.py", "preprocessing/config.pbtxt",
        "tiny_llama", "tiny_llama/1", "tiny_llama/1/model.py", "tiny_llama/config.pbtxt"]
    for model, template in [("preprocessing", "preprocessing"), ("tiny_llama", "engine"),
                            ("postprocessing", "postprocessing")]:
        assert filecmp.cmp(out / model / "1" / "model.py", TEMPLATES / f"{template}.py", shallow=False)


def test_engine_model_config(repo):
    out, engine = repo
    c = parse_config(out / "tiny_llama" / "config.pbtxt")
    assert (c.name, c.backend, c.platform, c.max_batch_size) == ("tiny_llama", "python", "", 4)
    assert c.model_transaction_policy.decoupled is True
    assert c.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in c.instance_group] == [
        (1, model_config_pb2().ModelInstanceGroup.Kind.Value("KIND_CPU"))]
    assert params(c) == {"engine_dir": str(engine), "max_batch_size": "4", "max_num_tokens": "32",
                         "kv_cache_free_gpu_memory_fraction": "0.5",
                         "enable_kv_cache_reuse": "false", "device": "cpu"}
    assert io(c, "input") == {
        "input_ids": ("TYPE_INT32", [-1], False), "input_lengths": ("TYPE_INT32", [1], True),
        "request_output_len": ("TYPE_INT32", [1], False),
        "stop_words_list": ("TYPE_INT32", [2, -1], True),
        "bad_words_list": ("TYPE_INT32", [2, -1], True),
        "embedding_bias": ("TYPE_FP32", [-1], True),
        "end_id": ("TYPE_INT32", [1], True), "pad_id": ("TYPE_INT32", [1], True),
        "runtime_top_k": ("TYPE_INT32", [1], True), "runtime_top_p": ("TYPE_FP32", [1], True),
        "runtime_min_p": ("TYPE_FP32", [1], True), "temperature": ("TYPE_FP32", [1], True),
        "repetition_penalty": ("TYPE_FP32", [1], True), "presence_penalty": ("TYPE_FP32", [1], True),
        "frequency_penalty": ("TYPE_FP32", [1], True), "random_seed": ("TYPE_UINT64", [1], True),
        "min_tokens": ("TYPE_INT32", [1], True), "return_log_probs": ("TYPE_BOOL", [1], True),
        "guided_decoding_guide_type": ("TYPE_STRING", [1], True),
        "guided_decoding_guide": ("TYPE_STRING", [1], True),
        "beam_width": ("TYPE_INT32", [1], True), "len_penalty": ("TYPE_FP32", [1], True),
        "early_stopping": ("TYPE_BOOL", [1], True),
        "streaming": ("TYPE_BOOL", [1], True)}
    # Per beam, as TensorRT-LLM's: [beam, tokens], [beam].
    assert io(c, "output") == {
        "output_ids": ("TYPE_INT32", [-1, -1], False),
        "output_lengths": ("TYPE_INT32", [-1], False),
        "context_ids": ("TYPE_INT32", [-1, -1], False),
        "sequence_length": ("TYPE_INT32", [-1], False),
        "output_log_probs": ("TYPE_FP32", [-1, -1], False),
        "cum_log_probs": ("TYPE_FP32", [-1], False),
        "finish_reason": ("TYPE_STRING", [-1], False)}


def test_pre_and_postprocessing_configs(repo):
    out, engine = repo
    pre = parse_config(out / "preprocessing" / "config.pbtxt")
    post = parse_config(out / "postprocessing" / "config.pbtxt")
    for c in (pre, post):
        assert (c.backend, c.max_batch_size) == ("python", 4)
        assert not c.model_transaction_policy.decoupled
        assert params(c) == {"tokenizer_dir": str(engine / "tokenizer")}
    assert io(pre, "input") == {"text_input": ("TYPE_STRING", [1], False),
                                "stop_words": ("TYPE_STRING", [-1], True),
                                "bad_words": ("TYPE_STRING", [-1], True),
                                "embedding_bias_words": ("TYPE_STRING", [-1], True),
                                "embedding_bias_weights": ("TYPE_FP32", [-1], True),
                                "apply_chat_template": ("TYPE_BOOL", [1], True)}
    assert io(pre, "output") == {"input_ids": ("TYPE_INT32", [-1], False),
                                 "input_lengths": ("TYPE_INT32", [1], False),
                                 "stop_words_list": ("TYPE_INT32", [2, -1], False),
                                 "bad_words_list": ("TYPE_INT32", [2, -1], False),
                                 "embedding_bias": ("TYPE_FP32", [-1], False)}
    assert io(post, "output") == {"text_output": ("TYPE_STRING", [-1], False),
                                  "out_finish_reason": ("TYPE_STRING", [-1], False),
                                  "out_output_log_probs": ("TYPE_FP32", [-1, -1], False),
                                  "out_cum_log_probs": ("TYPE_FP32", [-1], False)}


def test_ensemble_chains_the_three(repo):
    out, _ = repo
    c = parse_config(out / "ensemble" / "config.pbtxt")
    assert (c.name, c.platform, c.backend, c.max_batch_size) == ("ensemble", "ensemble", "", 4)
    steps = c.ensemble_scheduling.step
    assert [(s.model_name, s.model_version) for s in steps] == [
        ("preprocessing", -1), ("tiny_llama", -1), ("postprocessing", -1)]
    assert dict(steps[0].input_map) == {"text_input": "text_input", "stop_words": "stop_words",
                                        "bad_words": "bad_words",
                                        "embedding_bias_words": "embedding_bias_words",
                                        "embedding_bias_weights": "embedding_bias_weights",
                                        "apply_chat_template": "apply_chat_template"}
    assert dict(steps[1].input_map) == {
        "input_ids": "_input_ids", "input_lengths": "_input_lengths",
        "stop_words_list": "_stop_words_list", "bad_words_list": "_bad_words_list",
        "embedding_bias": "_embedding_bias",
        "request_output_len": "max_tokens",
        "end_id": "end_id", "pad_id": "pad_id", "runtime_top_k": "top_k", "runtime_top_p": "top_p",
        "runtime_min_p": "min_p", "temperature": "temperature",
        "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty", "random_seed": "random_seed",
        "min_tokens": "min_tokens",
        "return_log_probs": "return_log_probs",
        "guided_decoding_guide_type": "guided_decoding_guide_type",
        "guided_decoding_guide": "guided_decoding_guide", "beam_width": "beam_width",
        "len_penalty": "length_penalty", "early_stopping": "early_stopping", "streaming": "stream"}
    assert dict(steps[2].output_map) == {"text_output": "text_output",
                                         "out_finish_reason": "finish_reason",
                                         "out_output_log_probs": "output_log_probs",
                                         "out_cum_log_probs": "cum_log_probs"}
    inputs = io(c, "input")
    assert inputs["text_input"] == ("TYPE_STRING", [1], False)
    assert inputs["max_tokens"] == ("TYPE_INT32", [1], False)
    assert all(optional for name, (_, _, optional) in inputs.items()
               if name not in ("text_input", "max_tokens"))
    assert set(io(c, "output")) == {"text_output", "finish_reason", "output_log_probs",
                                    "cum_log_probs"}


def test_a_field_outside_the_schema_is_refused(tmp_path):
    from google.protobuf.text_format import ParseError

    (tmp_path / "config.pbtxt").write_text('name: "x"\nbackend: "python"\nmax_batch_sise: 4\n')
    with pytest.raises(ParseError, match="max_batch_sise"):
        parse_config(tmp_path / "config.pbtxt")


def invoke(*args):
    return CliRunner().invoke(triton_repo_main, [str(a) for a in args])


def one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines


def test_cli_writes_and_refuses(tiny_engine, tmp_path):
    _, engine = tiny_engine("llama")
    result = invoke("--engine", engine, "--output", tmp_path / "r", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "preprocessing, kiln, postprocessing, ensemble" in result.stdout
    c = parse_config(tmp_path / "r" / "kiln" / "config.pbtxt")
    assert c.max_batch_size == 8 and params(c)["max_batch_size"] == "8"  # the engine's
    assert "max_num_tokens" not in params(c)
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "r"), "already exists; pass --overwrite")
    assert invoke("--engine", engine, "--output", tmp_path / "r", "--overwrite").exit_code == 0
    one_line_error(invoke("--engine", tmp_path / "none", "--output", tmp_path / "s"), "does not exist")
    (tmp_path / "a-file").write_text("x")
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "a-file" / "r"),
                   "cannot write the model repository .*a-file/r: Not a directory; pass --output")
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "s", "--name", "ensemble"),
                   "cannot name the engine model")
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "s", "--max-batch-size", "99"),
                   r"outside what the engine was built for \(1..8\)")
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "s", "--max-batch-size", "0"),
                   r"max_batch_size=0 is outside what the engine was built for \(1..8\)")
    for tokens in ("0", "999"):
        one_line_error(invoke("--engine", engine, "--output", tmp_path / "s", "--max-num-tokens",
                              tokens),
                       rf"max_num_tokens={tokens} is outside what the engine was built for \(1..64\)")
    one_line_error(invoke("--engine", engine, "--output", tmp_path / "s",
                          "--kv-cache-free-gpu-memory-fraction", "1.5"), r"must be in \(0, 1\]")
    assert not (tmp_path / "s").exists()


def test_engine_without_tokenizer_is_refused(tiny_engine, tmp_path):
    import shutil

    _, engine = tiny_engine("llama")
    copy = tmp_path / "engine"
    shutil.copytree(engine, copy)
    shutil.rmtree(copy / "tokenizer")
    (copy / "tokenizer").mkdir()
    with pytest.raises(KilnError, match="the engine has no tokenizer"):
        write_repository(copy, tmp_path / "r")
