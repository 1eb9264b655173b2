"""The Llama decoder family (Llama 2/3/3.x, Mistral, Qwen2, Qwen3, Phi-3, Gemma 1-3, Granite,
OLMo 2 and 3, SmolLM3, GLM-4, EXAONE 4, ERNIE 4.5, Cohere, ..., and the mixtures of experts:
Mixtral, Qwen2/3-MoE, OLMoE, Granite MoE, GLM-4.5, ERNIE 4.5 MoE, Phi-3.5-MoE) declared in the
IR (config.ARCHITECTURES lists them).

The graph is written plainly, op by op, as HuggingFace computes it; fusion is the passes' job.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph, WeightSource, torch_dtype
from kiln.builder.models.config import BuildConfig, ModelConfig
from kiln.builder.ops.rope import rotary_permutation

STEP_INPUTS = {
    "input_ids": ("int32", ("T",)),
    "positions": ("int32", ("T",)),
    "slot_mapping": ("int64", ("T",)),
    "block_tables": ("int32", ("B", "MAXBLK")),
    "context_lens": ("int32", ("B",)),
    "query_start": ("int32", ("B+1",)),
    "last_token_index": ("int32", ("B",)),
}


def weight_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical weight the network reads, with the shape the config implies."""
    h, hd, i = m.hidden_size, m.head_dim, m.intermediate_size
    shapes = {"embed.weight": (m.vocab_size, h), "final_norm.weight": (h,)}
    if m.norm_bias:
        shapes["final_norm.bias"] = (h,)
    if not m.tie_word_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, h)
    if m.lm_head_bias:
        shapes["lm_head.bias"] = (m.vocab_size,)
    for layer in range(m.num_layers):
        p = f"layers.{layer}."
        norms = ["attn_norm"] if m.pre_norms else []
        norms += ["mlp_norm"] if m.pre_norms and not m.parallel_block else []
        for norm in norms:
            shapes |= {p + norm + ".weight": (h,), **({p + norm + ".bias": (h,)} if m.norm_bias else {})}
        shapes |= {p + "q.weight": (m.num_heads * hd, h), p + "k.weight": (m.num_kv_heads * hd, h),
                   p + "v.weight": (m.num_kv_heads * hd, h), p + "o.weight": (h, m.num_heads * hd)}
        if m.is_moe(layer):
            shapes |= _expert_shapes(m, p)
        else:
            shapes |= {**({p + "gate.weight": (i, h)} if m.gated_mlp else {}),
                       p + "up.weight": (i, h), p + "down.weight": (h, i)}
        if m.attention_bias:
            shapes |= {p + "q.bias": (m.num_heads * hd,), p + "k.bias": (m.num_kv_heads * hd,),
                       p + "v.bias": (m.num_kv_heads * hd,)}
        if m.o_bias:
            shapes[p + "o.bias"] = (h,)
        if m.mlp_bias and not m.is_moe(layer):
            shapes |= {**({p + "gate.bias": (i,)} if m.gated_mlp else {}),
                       p + "up.bias": (i,), p + "down.bias": (h,)}
        if m.qk_norm and m.qk_norm_full:
            shapes |= {p + "q_norm.weight": (m.num_heads * hd,),
                       p + "k_norm.weight": (m.num_kv_heads * hd,)}
        elif m.qk_norm:
            shapes |= {p + "q_norm.weight": (hd,), p + "k_norm.weight": (hd,)}
        if m.sandwich_norms:
            shapes |= {p + "attn_out_norm.weight": (h,), p + "mlp_out_norm.weight": (h,)}
    return shapes


def _expert_shapes(m: ModelConfig, p: str) -> dict[str, tuple[int, ...]]:
    """A MoE layer's checkpoint tensors: the router, each expert's gate, up and down, and the
    shared expert with its gate where the family has one."""
    h, mi, si = m.hidden_size, m.moe_intermediate_size, m.shared_expert_size
    shapes = {p + "router.weight": (m.num_experts, h)}
    if m.moe_correction_bias:
        shapes[p + "router.correction_bias"] = (m.num_experts,)
    for e in range(m.num_experts):
        shapes |= {f"{p}experts.{e}.gate.weight": (mi, h), f"{p}experts.{e}.up.weight": (mi, h),
                   f"{p}experts.{e}.down.weight": (h, mi)}
    if si:
        shapes |= {p + "shared.gate.weight": (si, h), p + "shared.up.weight": (si, h),
                   p + "shared.down.weight": (h, si)}
    if m.shared_expert_gated:
        shapes[p + "shared_gate.weight"] = (1, h)
    return shapes


def _weight_dtype(m: ModelConfig, name: str, dtype: str) -> str:
    """The dtype the engine holds a weight in: the build's, but float32 for a router whose
    GEMM runs in float32 and for the routers' correction biases."""
    if name.endswith("router.correction_bias") or (m.router_float32 and name.endswith("router.weight")):
        return "float32"
    return dtype


def _stacked_experts(m: ModelConfig, ckpt, p: str) -> dict[str, tuple[tuple[int, ...], WeightSource]]:
    """A MoE layer's experts as the moe op reads them: gate_up [E, 2I, H] (each expert's gate
    rows, then its up rows) and down [E, H, I], stacked from the checkpoint's tensors (as
    _source reads them: Granite's residual multiplier on the down projections)."""
    e, h, mi = m.num_experts, m.hidden_size, m.moe_intermediate_size

    def stack(parts):
        def load(dtype):
            return torch.stack([torch.cat([_source(ckpt, f"{p}experts.{i}.{part}.weight", m,
                                                   None).load(dtype) for part in parts])
                                for i in range(e)])
        return WeightSource(load=load, describe=f"checkpoint:{p}experts.*.{'+'.join(parts)}")

    return {p + "experts.gate_up.weight": ((e, 2 * mi, h), stack(("gate", "up"))),
            p + "experts.down.weight": ((e, h, mi), stack(("down",)))}


@dataclass(frozen=True, slots=True)
class _HeadLayout:
    """How q's and k's head dims are read from the checkpoint: permuted into the kernels'
    rotate-half order where RoPE is partial or interleaved (ops.rope), and scaled by LongRoPE's
    or YaRN's attention_factor where HF multiplies the rotated dims' cos and sin by it. The
    scale goes into the last map before RoPE (the q/k norms' weights where the model has them,
    else the projections), so the kernels rotate by plain cos and sin and the cache holds what
    HF's holds."""
    head_dim: int
    perm: torch.Tensor | None
    scale: torch.Tensor | None  # [head_dim] in engine order
    permuted: tuple[str, ...]   # names ending so are permuted
    scaled: tuple[str, ...]     # ... and scaled

    def apply(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """w (float32) of a weight named so, in the engine's layout."""
        heads = w.reshape(-1, self.head_dim, *w.shape[1:])
        if self.perm is not None:
            heads = heads[:, self.perm]
        if self.scale is not None and name.endswith(self.scaled):
            heads = heads * self.scale.reshape(-1, *[1] * (w.dim() - 1))
        return heads.reshape(w.shape)


def _head_layout(m: ModelConfig, rope: dict) -> _HeadLayout | None:
    factor = (rope["scaling"] or {}).get("attention_factor", 1.0)
    if not (m.rotary_dim or m.rope_interleaved) and factor == 1.0:
        return None
    hd = m.head_dim
    perm = (rotary_permutation(hd, m.rotary_dim or hd, m.rope_interleaved)
            if m.rotary_dim or m.rope_interleaved else None)
    scale = None
    if factor != 1.0:
        r = (m.rotary_dim or hd) // 2
        rotated = (torch.arange(hd) % (hd // 2)) < r  # pairs (j, j + hd/2), j < r, in engine order
        scale = torch.where(rotated, torch.tensor(factor, dtype=torch.float32), torch.tensor(1.0))
    projections = ("q.weight", "k.weight", "q.bias", "k.bias")
    norms = ("q_norm.weight", "k_norm.weight")
    return _HeadLayout(hd, perm, scale, projections + norms if m.qk_norm else projections,
                       norms if m.qk_norm else projections)


_RESIDUAL = ("o.weight", "o.bias", "down.weight", "down.bias")  # what writes the residual


def _source(ckpt, name: str, m: ModelConfig, layout: _HeadLayout | None) -> WeightSource:
    """A weight read from the checkpoint as the engine computes with it: an RMSNorm's as
    1 + weight where the family stores it so (Gemma), q's and k's in `layout`'s order, the
    o and down projections times residual_multiplier (Granite)."""
    offset = m.norm_offset and name.endswith("norm.weight")
    heads = layout is not None and name.endswith(layout.permuted)
    residual = m.residual_multiplier if name.endswith(_RESIDUAL) else None
    if name.endswith("router.correction_bias"):
        return WeightSource(load=lambda dtype: ckpt.load(name, dtype).reshape(-1),
                            describe=f"checkpoint:{name} (flat)")
    if not (offset or heads or residual):
        return WeightSource(load=lambda dtype: ckpt.load(name, dtype), describe=f"checkpoint:{name}")

    def load(dtype):
        w = ckpt.load(name, torch.float32)
        w = w + 1.0 if offset else w
        w = w * residual if residual else w
        return (layout.apply(name, w) if heads else w).to(dtype)

    return WeightSource(load=load, describe=f"checkpoint:{name} (as the engine computes with it)")


def declare_weights(graph: Graph, m: ModelConfig, dtype: str, ckpt, rope: dict) -> None:
    """Adds every weight, refusing a checkpoint whose tensors are missing or misshapen."""
    present = set(ckpt.names())
    layout = _head_layout(m, rope)
    if (layout or m.residual_multiplier) and getattr(ckpt, "prequantized", None):
        raise KilnError("a pre-quantized checkpoint of a model whose q/k or o/down weights Kiln "
                        "lays out anew (partial or interleaved RoPE, LongRoPE, YaRN, Granite's "
                        "residual multiplier) is not read; build from the unquantized checkpoint "
                        "with --quant")
    for name, shape in weight_shapes(m).items():
        if name not in present:
            raise KilnError(f"checkpoint has no tensor for {name} (a {m.architecture} with this "
                            "config needs it); is the checkpoint complete?")
        found = tuple(ckpt.meta(name)[0])
        if name.endswith("router.correction_bias") and found == (1, *shape):
            found = shape  # ERNIE 4.5 stores it [1, E]: read flat (_source)
        if found != shape:
            raise KilnError(f"tensor {name} has shape {list(found)} but config.json implies "
                            f"{list(shape)}; the checkpoint and its config.json do not match")
        if ".experts." not in name:  # the experts' tensors are read stacked, below
            graph.add_weight(name, _weight_dtype(m, name, dtype), shape,
                             _source(ckpt, name, m, layout))
    for layer in range(m.num_layers):
        if m.is_moe(layer):
            for name, (shape, source) in _stacked_experts(m, ckpt, f"layers.{layer}.").items():
                graph.add_weight(name, dtype, shape, source)


def _params(prefix: str, bias: bool) -> list[str]:
    """A linear's weight, and its bias when the model has one."""
    return [prefix + ".weight"] + ([prefix + ".bias"] if bias else [])


def _dense_mlp(g: Graph, m: ModelConfig, x: str, p: str, bias: bool | None = None) -> list[str]:
    """act(gate) * up, or act(up) where the MLP is not gated, then down; with biases where the
    model's MLPs have them (`bias`: otherwise)."""
    bias = m.mlp_bias if bias is None else bias
    if m.gated_mlp:
        (gate,) = g.call("linear", [x, *_params(p + "gate", bias)], [p + "gate"])
        (up,) = g.call("linear", [x, *_params(p + "up", bias)], [p + "up"])
        (act,) = g.call(m.mlp_act, [gate], [p + "gate_act"])
        (act,) = g.call("mul", [act, up], [p + "mlp_act"])
    else:
        (up,) = g.call("linear", [x, *_params(p + "up", bias)], [p + "up"])
        (act,) = g.call(m.mlp_act, [up], [p + "mlp_act"])
    return g.call("linear", [act, *_params(p + "down", bias)], [p + "mlp_out"])


def _moe_mlp(g: Graph, m: ModelConfig, x: str, p: str) -> list[str]:
    """The routed experts on x, and the shared expert beside them: gated (Qwen2-MoE, inside
    the moe op) or added (GLM-4.5)."""
    router_in = x
    if m.router_float32:
        (router_in,) = g.call("cast", [x], [p + "router_in"], dtype="float32")
    (logits,) = g.call("linear", [router_in, p + "router.weight"], [p + "router_logits"])
    extra = [p + "router.correction_bias"] if m.moe_correction_bias else []
    (shared,) = _dense_mlp(g, m, x, p + "shared.", bias=False) if m.shared_expert_size else (None,)
    if m.shared_expert_gated:
        extra += [shared, *g.call("linear", [x, p + "shared_gate.weight"], [p + "shared_gate"])]
    attrs = dict(top_k=m.experts_per_token, renormalize=m.moe_renormalize,
                 round_weights=m.moe_round_weights, act=m.mlp_act, scoring=m.moe_scoring,
                 bias=m.moe_correction_bias, routed_scale=m.moe_routed_scale or 1.0,
                 eps=m.sparsemixer_eps)
    routed = p + ("routed_out" if shared and not m.shared_expert_gated else "mlp_out")
    (out,) = g.call("moe", [x, logits, p + "experts.gate_up.weight", p + "experts.down.weight",
                            *extra], [routed], **attrs)
    if shared and not m.shared_expert_gated:
        return g.call("add", [out, shared], [p + "mlp_out"])
    return [out]


def build_graph(m: ModelConfig, build: BuildConfig, ckpt) -> Graph:
    g = Graph()
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")
    rope = m.rope_attrs(build.max_seq_len)
    declare_weights(g, m, build.dtype, ckpt, rope)
    eps, hd = m.rms_norm_eps, m.head_dim
    norm = "layernorm" if m.layer_norm else "rmsnorm"

    def normed(x: str, weight: str, out: str) -> str:
        bias = [weight[: -len("weight")] + "bias"] if m.norm_bias else []
        return g.call(norm, [x, weight, *bias], [out], eps=eps)[0]
    step = ["positions", "slot_mapping", "block_tables", "context_lens", "query_start"]

    (h,) = g.call("embedding", ["input_ids", "embed.weight"], ["embed"])
    if m.embed_scale:  # HF multiplies by sqrt(hidden_size) rounded to the activations' dtype
        value = float(torch.tensor(m.hidden_size ** 0.5, dtype=torch_dtype(build.dtype)))
        (h,) = g.call("scale", [h], ["embed_scaled"], value=value)
    if m.embed_multiplier:
        (h,) = g.call("scale", [h], ["embed_scaled"], value=m.embed_multiplier)
    for layer in range(m.num_layers):
        p = f"layers.{layer}."
        x = h
        if m.pre_norms:
            x = normed(h, p + "attn_norm.weight", p + "attn_in")
        block_in = x
        qkv = []
        for part in ("q", "k", "v"):
            qkv += g.call("linear", [x, *_params(p + part, m.attention_bias)], [p + part])
        q, k, v = qkv
        if m.qk_norm and m.qk_norm_full:
            (q,) = g.call("rmsnorm", [q, p + "q_norm.weight"], [p + "q_normed"], eps=eps)
            (k,) = g.call("rmsnorm", [k, p + "k_norm.weight"], [p + "k_normed"], eps=eps)
        elif m.qk_norm:
            (q,) = g.call("head_rmsnorm", [q, p + "q_norm.weight"], [p + "q_normed"], eps=eps, head_dim=hd)
            (k,) = g.call("head_rmsnorm", [k, p + "k_norm.weight"], [p + "k_normed"], eps=eps, head_dim=hd)
        if layer not in (m.nope_layers or ()):
            layer_rope = m.rope_attrs(build.max_seq_len, layer)
            (q,) = g.call("rope", [q, "positions"], [p + "q_rot"], **layer_rope)
            (k,) = g.call("rope", [k, "positions"], [p + "k_rot"], **layer_rope)
        optional = {"window": m.attention_window(layer, build.max_seq_len),
                    "softcap": m.attn_softcap}
        (a,) = g.call("attention", [q, k, v, *step], [p + "attn"], layer=layer,
                      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=hd,
                      scale=m.attn_scale or hd ** -0.5, rope=None,
                      **{key: value for key, value in optional.items() if value})
        (o,) = g.call("linear", [a, *_params(p + "o", m.o_bias)], [p + "attn_out"])
        if m.sandwich_norms:
            (o,) = g.call(norm, [o, p + "attn_out_norm.weight"], [p + "attn_out_normed"], eps=eps)
        (h,) = g.call("add", [h, o], [p + "post_attn"])
        x = h
        if m.parallel_block:  # the MLP reads what attention read; both outputs join h
            x = block_in
        elif m.pre_norms:
            x = normed(h, p + "mlp_norm.weight", p + "mlp_in")
        (d,) = (_moe_mlp if m.is_moe(layer) else _dense_mlp)(g, m, x, p)
        if m.sandwich_norms:
            (d,) = g.call(norm, [d, p + "mlp_out_norm.weight"], [p + "mlp_out_normed"], eps=eps)
        (h,) = g.call("add", [h, d], [p + "out"])
    n = normed(h, "final_norm.weight", "final_norm")
    head = ["embed.weight" if m.tie_word_embeddings else "lm_head.weight"]
    head += ["lm_head.bias"] if m.lm_head_bias else []
    (logits,) = g.call("linear", [n, *head], ["logits_all"])
    (last,) = g.call("gather_last", [logits, "last_token_index"], ["logits_last"])
    if m.logit_scale:
        (last,) = g.call("scale", [last], ["logits_scaled"], value=m.logit_scale)
    if m.logits_scaling:
        (last,) = g.call("scale", [last], ["logits_scaled"], value=1.0 / m.logits_scaling)
    if m.final_softcap:
        (last,) = g.call("softcap", [last], ["logits_capped"], cap=m.final_softcap)
    g.call("cast", [last], ["logits"], dtype="float32")
    g.values["logits"].kind = "output"
    return g
