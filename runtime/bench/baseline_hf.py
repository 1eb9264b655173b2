"""The HuggingFace baseline: the same model and dataset through transformers' `generate`.

The HF model is built from the engine's own config and loaded with the engine's own weights
(canonical names mapped back to HF's, fused q/k/v and gate/up split again), so both sides
compute the same function. Requests run in static batches, longest first, every output forced
to its target length; a logits processor stamps each step so HF gets per-request timelines
too (all its requests arrive at the start, as in Kiln's all-at-once runs).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from kiln.builder.errors import KilnError
from kiln.builder.models.config import ModelConfig
from kiln.runtime.bench.dataset import BenchRequest
from kiln.runtime.bench.latency import LatencyResult
from kiln.runtime.bench.metrics import RequestTiming, RunMetrics, summarize

MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
               "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
               "Phi3ForCausalLM": "phi3"}
# HF tensors a family stores fused: the HF names of their parts, in order.
_FUSED = {"Phi3ForCausalLM": {"self_attn.qkv_proj.weight": ("self_attn.q_proj.weight",
                                                             "self_attn.k_proj.weight",
                                                             "self_attn.v_proj.weight"),
                              "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight",
                                                          "mlp.up_proj.weight")}}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "q_norm.weight": "self_attn.q_norm.weight", "k_norm.weight": "self_attn.k_norm.weight",
    **{f"{p}.{kind}": f"self_attn.{p}_proj.{kind}" for p in "qkvo" for kind in ("weight", "bias")},
    **{f"{p}.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_GLOBAL_NAMES = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
                 "lm_head.weight": "lm_head.weight"}


def hf_config(m: ModelConfig):
    """The transformers config of the engine's model."""
    import transformers

    kwargs = dict(
        architectures=[m.architecture], vocab_size=m.vocab_size, hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim,
        rms_norm_eps=m.rms_norm_eps, rope_theta=m.rope_theta, rope_scaling=m.rope_scaling,
        max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=m.tie_word_embeddings, attention_bias=m.attention_bias,
        sliding_window=m.sliding_window, use_sliding_window=m.sliding_window is not None,
        bos_token_id=m.bos_token_id, eos_token_id=m.eos_token_id, pad_token_id=0)
    if (m.rope_scaling or {}).get("rope_type") == "longrope":
        kwargs["original_max_position_embeddings"] = m.rope_scaling["original_max_position_embeddings"]
    if m.rotary_dim:
        kwargs["partial_rotary_factor"] = m.rotary_dim / m.head_dim
    return transformers.AutoConfig.for_model(MODEL_TYPES[m.architecture], **kwargs)


def paired_weights(graph) -> set[str]:
    """The fused gate/up weights whose rows the engine holds in pairs: those of the linears
    whose act-mul is marked `pairs`."""
    producer = {out: node for node in graph.nodes for out in node.outputs}
    paired = set()
    for node in graph.nodes:
        if node.attrs.get("pairs"):
            linear = producer.get(node.inputs[0])
            if linear is not None and linear.op == "linear":
                paired.add(linear.inputs[1])
    return paired


def hf_state_dict(engine) -> dict[str, torch.Tensor]:
    """The engine's weights under HF names; KilnError on a weight with no HF counterpart."""
    m, build = engine.config.model, engine.config.build
    quant = getattr(build, "quant", "none")
    if quant != "none":
        raise KilnError(f"the engine is quantized ({quant}); HF runs the unquantized model")
    if m.rotary_dim or (m.rope_scaling or {}).get("rope_type") == "longrope":
        raise KilnError("the engine's q and k head dims are laid out for its RoPE kernels "
                        "(partial RoPE or LongRoPE), not as HF reads them")
    splits = {"qkv": (("q", "k", "v"), (m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim,
                                         m.num_kv_heads * m.head_dim)),
              "gate_up": (("gate", "up"), (m.intermediate_size, m.intermediate_size))}
    paired = paired_weights(engine.graph)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in engine.weights.items():
        if tensor.dtype != getattr(torch, build.dtype):
            raise KilnError(f"engine weight {name} is stored as {tensor.dtype}, not the "
                            f"engine's {build.dtype}")
        if name in _GLOBAL_NAMES:
            state[_GLOBAL_NAMES[name]] = tensor
            continue
        parts = name.split(".")
        if parts[0] != "layers" or len(parts) != 4 or parts[3] not in ("weight", "bias"):
            raise KilnError(f"engine weight {name} has no HuggingFace counterpart")
        prefix, part, kind = f"model.layers.{parts[1]}.", parts[2], parts[3]
        if part in splits:
            names, sizes = splits[part]
            if tensor.shape[0] != sum(sizes):
                raise KilnError(f"engine weight {name} has {tensor.shape[0]} rows, the model's "
                                f"config implies {sum(sizes)}")
            if name in paired:  # row 2j gate j, row 2j + 1 up j (passes/fuse_gate_up.py)
                tensor = torch.cat((tensor[0::2], tensor[1::2]))
            for piece, chunk in zip(names, torch.split(tensor, sizes)):
                state[prefix + _LAYER_NAMES[f"{piece}.{kind}"]] = chunk
        elif f"{part}.{kind}" in _LAYER_NAMES:
            state[prefix + _LAYER_NAMES[f"{part}.{kind}"]] = tensor
        else:
            raise KilnError(f"engine weight {name} has no HuggingFace counterpart")
    if m.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for layer in range(m.num_layers):
        prefix = f"model.layers.{layer}."
        for fused, parts in _FUSED.get(m.architecture, {}).items():
            state[prefix + fused] = torch.cat([state.pop(prefix + p) for p in parts])
    return state


def load_hf_model(engine, device: str) -> tuple[object, str]:
    """(model, where its weights came from): the engine's weights, or random ones of the same
    shape where the engine's cannot be mapped back (e.g. a quantized engine)."""
    import transformers

    m = engine.config.model
    if m.architecture not in MODEL_TYPES:
        raise KilnError(f"no HuggingFace baseline for {m.architecture}; drop --baseline")
    dtype = getattr(torch, engine.config.build.dtype)
    try:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(hf_config(m), dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        raise KilnError("the GPU has no room for the HuggingFace model (Kiln's memory should be "
                        "released by now); drop --baseline or use a larger GPU") from None
    model.eval()
    try:
        state = hf_state_dict(engine)
    except KilnError as why:
        return model, f"random weights of the same shape ({why})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as why:  # a shape that does not fit
        return model, f"random weights of the same shape ({' '.join(str(why).split())[:200]})"
    if missing or unexpected:
        return model, (f"random weights of the same shape (the engine's do not fit: missing "
                       f"{missing[:2]}, unexpected {unexpected[:2]})")
    return model, "the engine's weights"


class _StepClock:
    """A logits processor that stamps the end of each generation step (after the forward)."""

    def __init__(self, device: str, clock) -> None:
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.clock = clock
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.sync()
        self.times.append(self.clock())
        return scores


def _generate(model, batch: list[BenchRequest], device: str, clock) -> list[float]:
    """Runs one static batch (left-padded) for its longest target; returns each step's time."""
    import transformers

    width = max(r.input_len for r in batch)
    new = max(r.output_tokens for r in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, r in enumerate(batch):
        ids[row, width - r.input_len:] = torch.tensor(r.input_ids)
        mask[row, width - r.input_len:] = 1
    stamp = _StepClock(device, clock)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0, logits_processor=transformers.LogitsProcessorList([stamp]))
    if out.shape[1] != width + new or len(stamp.times) != new:
        raise KilnError(f"HuggingFace generate made {out.shape[1] - width} of {new} tokens; "
                        "the baseline could not force output lengths")
    return stamp.times


_OUT_OF_MEMORY = ("HuggingFace runs out of GPU memory even at batch 1; drop --baseline or use "
                  "shorter requests")


def _generate_or_none(model, batch, device: str, clock) -> list[float] | None:
    """_generate, or None (with the memory freed) where the batch does not fit on the GPU."""
    try:
        return _generate(model, batch, device, clock)
    except torch.cuda.OutOfMemoryError:
        pass
    free_memory()  # here, once the exception no longer holds the batch's tensors
    return None


@dataclass(slots=True)
class HFRun:
    metrics: RunMetrics
    num_requests: int
    batch_size: int
    weights: str

    def describe(self) -> str:
        return (f"transformers generate, static batches of up to {self.batch_size}, longest "
                f"first; {self.weights}")

    def to_json(self) -> dict:
        return {"name": "hf", "num_requests": self.num_requests, "batch_size": self.batch_size,
                "weights": self.weights, "method": self.describe(), "metrics": self.metrics.to_json()}


def run_hf_throughput(model, weights: str, requests: list[BenchRequest], batch_size: int,
                      device: str, clock=time.perf_counter) -> HFRun:
    """All requests arrive at the start; on running out of GPU memory the batch halves."""
    order = sorted(requests, key=lambda r: (r.input_len + r.output_tokens, r.input_len), reverse=True)
    shortest = order[-1]  # warm-up (allocator, kernels) with a few tokens only
    warm = [BenchRequest(-1, shortest.input_ids, min(shortest.output_tokens, 4))]
    if _generate_or_none(model, warm, device, clock) is None:
        raise KilnError(_OUT_OF_MEMORY)
    timings, i, start = [], 0, clock()
    while i < len(order):
        batch = order[i: i + batch_size]
        steps = _generate_or_none(model, batch, device, clock)
        if steps is None:
            if batch_size == 1:
                raise KilnError(_OUT_OF_MEMORY)
            batch_size //= 2
            continue
        timings += [RequestTiming(start, r.input_len, steps[: r.output_tokens]) for r in batch]
        i += len(batch)
    return HFRun(summarize(timings, start), len(order), batch_size, weights)


def run_hf_latency(model, prompt: list[int], output_len: int, iterations: int, warmup: int,
                   device: str, clock=time.perf_counter) -> LatencyResult:
    request = BenchRequest(0, list(prompt), output_len)
    timings = []
    for i in range(warmup + iterations):
        start = clock()
        steps = _generate(model, [request], device, clock)
        if i >= warmup:
            timings.append(RequestTiming(start, request.input_len, steps))
    return LatencyResult.of(timings, output_len)


def free_memory() -> None:
    """Returns freed GPU memory to the device, so the next model can have it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
