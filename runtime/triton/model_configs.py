"""The four model configurations of a Kiln Triton repository (TensorRT-LLM's
`inflight_batcher_llm` layout): preprocessing -> engine model -> postprocessing, and the
ensemble that chains them.

Tensor names follow TensorRT-LLM's backend where they mean the same thing (`input_ids`,
`request_output_len`, `stop_words_list`, `runtime_top_k`, `text_output`, ...), so clients
written for it need few changes. Dims leave out the batch dimension (max_batch_size > 0).
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.runtime.triton.pbtxt import Enum, Map

PREPROCESSING = "preprocessing"
POSTPROCESSING = "postprocessing"
ENSEMBLE = "ensemble"


@dataclass(slots=True, frozen=True)
class TensorSpec:
    name: str
    data_type: str      # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False

    def as_config(self) -> dict:
        return {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims),
                "optional": True if self.optional else None}


def _opt(name: str, data_type: str, dims=(1,)) -> TensorSpec:
    return TensorSpec(name, data_type, tuple(dims), optional=True)


PREPROCESSING_INPUTS = (
    TensorSpec("text_input", "TYPE_STRING", (1,)),
    _opt("stop_words", "TYPE_STRING", (-1,)),
    _opt("bad_words", "TYPE_STRING", (-1,)),
    _opt("embedding_bias_words", "TYPE_STRING", (-1,)),
    _opt("embedding_bias_weights", "TYPE_FP32", (-1,)),
    _opt("apply_chat_template", "TYPE_BOOL"),
)
PREPROCESSING_OUTPUTS = (
    TensorSpec("input_ids", "TYPE_INT32", (-1,)),
    TensorSpec("input_lengths", "TYPE_INT32", (1,)),
    TensorSpec("stop_words_list", "TYPE_INT32", (2, -1)),
    TensorSpec("bad_words_list", "TYPE_INT32", (2, -1)),
    TensorSpec("embedding_bias", "TYPE_FP32", (-1,)),  # [vocab], or [0] when none asked for
)

# ensemble input name -> engine model input name, for the inputs the ensemble passes straight on
SAMPLING_INPUTS = {
    "end_id": _opt("end_id", "TYPE_INT32"),
    "pad_id": _opt("pad_id", "TYPE_INT32"),
    "top_k": _opt("runtime_top_k", "TYPE_INT32"),
    "top_p": _opt("runtime_top_p", "TYPE_FP32"),
    "min_p": _opt("runtime_min_p", "TYPE_FP32"),
    "temperature": _opt("temperature", "TYPE_FP32"),
    "repetition_penalty": _opt("repetition_penalty", "TYPE_FP32"),
    "presence_penalty": _opt("presence_penalty", "TYPE_FP32"),
    "frequency_penalty": _opt("frequency_penalty", "TYPE_FP32"),
    "random_seed": _opt("random_seed", "TYPE_UINT64"),
    "min_tokens": _opt("min_tokens", "TYPE_INT32"),
    "return_log_probs": _opt("return_log_probs", "TYPE_BOOL"),
    "guided_decoding_guide_type": _opt("guided_decoding_guide_type", "TYPE_STRING"),
    "guided_decoding_guide": _opt("guided_decoding_guide", "TYPE_STRING"),
    "beam_width": _opt("beam_width", "TYPE_INT32"),
    "length_penalty": _opt("len_penalty", "TYPE_FP32"),
    "early_stopping": _opt("early_stopping", "TYPE_BOOL"),
    "stream": _opt("streaming", "TYPE_BOOL"),
}
ENGINE_INPUTS = (
    TensorSpec("input_ids", "TYPE_INT32", (-1,)),
    _opt("input_lengths", "TYPE_INT32"),
    TensorSpec("request_output_len", "TYPE_INT32", (1,)),
    _opt("stop_words_list", "TYPE_INT32", (2, -1)),
    _opt("bad_words_list", "TYPE_INT32", (2, -1)),
    _opt("embedding_bias", "TYPE_FP32", (-1,)),
    *SAMPLING_INPUTS.values(),
)
# The engine model's outputs are per beam, as TensorRT-LLM's ([beam, ...] after the batch
# dimension; one beam without beam search). A beam search answers once, at the end: each beam's
# tokens padded with pad_id to the longest, output_lengths saying how many are its own.
ENGINE_OUTPUTS = (
    TensorSpec("output_ids", "TYPE_INT32", (-1, -1)),       # tokens new in this response
    TensorSpec("output_lengths", "TYPE_INT32", (-1,)),      # of each beam's row of output_ids
    TensorSpec("context_ids", "TYPE_INT32", (-1, -1)),      # the few sent before, to detokenize
    TensorSpec("sequence_length", "TYPE_INT32", (-1,)),     # prompt + generated so far
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),  # of output_ids, when asked for
    TensorSpec("cum_log_probs", "TYPE_FP32", (-1,)),        # their sum so far, when asked for
    TensorSpec("finish_reason", "TYPE_STRING", (-1,)),      # "not_finished" until the last
)
POSTPROCESSING_INPUTS = (
    TensorSpec("output_ids", "TYPE_INT32", (-1, -1)),
    TensorSpec("output_lengths", "TYPE_INT32", (-1,)),
    TensorSpec("context_ids", "TYPE_INT32", (-1, -1)),
    TensorSpec("finish_reason", "TYPE_STRING", (-1,)),
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("cum_log_probs", "TYPE_FP32", (-1,)),
)
POSTPROCESSING_OUTPUTS = (
    TensorSpec("text_output", "TYPE_STRING", (-1,)),
    TensorSpec("out_finish_reason", "TYPE_STRING", (-1,)),
    TensorSpec("out_output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("out_cum_log_probs", "TYPE_FP32", (-1,)),
)
ENSEMBLE_INPUTS = (
    TensorSpec("text_input", "TYPE_STRING", (1,)),
    TensorSpec("max_tokens", "TYPE_INT32", (1,)),
    _opt("stop_words", "TYPE_STRING", (-1,)),
    _opt("bad_words", "TYPE_STRING", (-1,)),
    _opt("embedding_bias_words", "TYPE_STRING", (-1,)),
    _opt("embedding_bias_weights", "TYPE_FP32", (-1,)),
    _opt("apply_chat_template", "TYPE_BOOL"),
    *(TensorSpec(name, s.data_type, s.dims, True) for name, s in SAMPLING_INPUTS.items()),
)
ENSEMBLE_OUTPUTS = (  # one per beam
    TensorSpec("text_output", "TYPE_STRING", (-1,)),
    TensorSpec("finish_reason", "TYPE_STRING", (-1,)),
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("cum_log_probs", "TYPE_FP32", (-1,)),
)


def _parameters(values: dict) -> Map:
    return Map({k: {"string_value": str(v).lower() if isinstance(v, bool) else str(v)}
                for k, v in values.items() if v is not None})


def _python_model(name: str, max_batch_size: int, inputs, outputs, parameters: dict,
                  decoupled: bool = False) -> dict:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "model_transaction_policy": {"decoupled": True} if decoupled else None,
        # Triton hands the engine model every queued request at once; the executor batches them.
        "dynamic_batching": {} if decoupled else None,
        "input": [t.as_config() for t in inputs],
        "output": [t.as_config() for t in outputs],
        # One instance: one process, one executor, one KV cache shared by all requests.
        "instance_group": [{"count": 1, "kind": Enum("KIND_CPU")}],
        "parameters": _parameters(parameters),
    }


def preprocessing_config(max_batch_size: int, tokenizer_dir: str) -> dict:
    return _python_model(PREPROCESSING, max_batch_size, PREPROCESSING_INPUTS,
                         PREPROCESSING_OUTPUTS, {"tokenizer_dir": tokenizer_dir})


def postprocessing_config(max_batch_size: int, tokenizer_dir: str) -> dict:
    return _python_model(POSTPROCESSING, max_batch_size, POSTPROCESSING_INPUTS,
                         POSTPROCESSING_OUTPUTS, {"tokenizer_dir": tokenizer_dir})


def engine_config(name: str, max_batch_size: int, parameters: dict) -> dict:
    return _python_model(name, max_batch_size, ENGINE_INPUTS, ENGINE_OUTPUTS, parameters,
                         decoupled=True)


def ensemble_config(engine_name: str, max_batch_size: int) -> dict:
    steps = [
        (PREPROCESSING, {"text_input": "text_input", "stop_words": "stop_words",
                         "bad_words": "bad_words", "embedding_bias_words": "embedding_bias_words",
                         "embedding_bias_weights": "embedding_bias_weights",
                         "apply_chat_template": "apply_chat_template"},
         {t.name: f"_{t.name}" for t in PREPROCESSING_OUTPUTS}),
        (engine_name, {"input_ids": "_input_ids", "input_lengths": "_input_lengths",
                       "stop_words_list": "_stop_words_list", "bad_words_list": "_bad_words_list",
                       "embedding_bias": "_embedding_bias",
                       "request_output_len": "max_tokens",
                       **{s.name: name for name, s in SAMPLING_INPUTS.items()}},
         {t.name: f"_{t.name}" for t in POSTPROCESSING_INPUTS}),
        (POSTPROCESSING, {t.name: f"_{t.name}" for t in POSTPROCESSING_INPUTS},
         {"text_output": "text_output", "out_finish_reason": "finish_reason",
          "out_output_log_probs": "output_log_probs", "out_cum_log_probs": "cum_log_probs"}),
    ]
    return {
        "name": ENSEMBLE,
        "platform": "ensemble",
        "max_batch_size": max_batch_size,
        "input": [t.as_config() for t in ENSEMBLE_INPUTS],
        "output": [t.as_config() for t in ENSEMBLE_OUTPUTS],
        "ensemble_scheduling": {"step": [
            {"model_name": model, "model_version": -1, "input_map": Map(ins),
             "output_map": Map(outs)} for model, ins, outs in steps]},
    }
