"""The Llama decoder family (Llama 2/3/3.x, Mistral, Qwen2, Qwen3) declared in the IR.

The graph is written plainly, op by op, as HuggingFace computes it; fusion is the passes' job.
"""
from __future__ import annotations

from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph, WeightSource
from kiln.builder.models.config import BuildConfig, ModelConfig

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
    if not m.tie_word_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, h)
    for layer in range(m.num_layers):
        p = f"layers.{layer}."
        shapes |= {p + "attn_norm.weight": (h,), p + "mlp_norm.weight": (h,),
                   p + "q.weight": (m.num_heads * hd, h), p + "k.weight": (m.num_kv_heads * hd, h),
                   p + "v.weight": (m.num_kv_heads * hd, h), p + "o.weight": (h, m.num_heads * hd),
                   p + "gate.weight": (i, h), p + "up.weight": (i, h), p + "down.weight": (h, i)}
        if m.attention_bias:
            shapes |= {p + "q.bias": (m.num_heads * hd,), p + "k.bias": (m.num_kv_heads * hd,),
                       p + "v.bias": (m.num_kv_heads * hd,)}
        if m.o_bias:
            shapes[p + "o.bias"] = (h,)
        if m.mlp_bias:
            shapes |= {p + "gate.bias": (i,), p + "up.bias": (i,), p + "down.bias": (h,)}
        if m.qk_norm:
            shapes |= {p + "q_norm.weight": (hd,), p + "k_norm.weight": (hd,)}
    return shapes


def _checkpoint_source(ckpt, name: str) -> WeightSource:
    return WeightSource(load=lambda dtype: ckpt.load(name, dtype), describe=f"checkpoint:{name}")


def declare_weights(graph: Graph, m: ModelConfig, dtype: str, ckpt) -> None:
    """Adds every weight, refusing a checkpoint whose tensors are missing or misshapen."""
    present = set(ckpt.names())
    for name, shape in weight_shapes(m).items():
        if name not in present:
            raise KilnError(f"checkpoint has no tensor for {name} (a {m.architecture} with this "
                            "config needs it); is the checkpoint complete?")
        found = tuple(ckpt.meta(name)[0])
        if found != shape:
            raise KilnError(f"tensor {name} has shape {list(found)} but config.json implies "
                            f"{list(shape)}; the checkpoint and its config.json do not match")
        graph.add_weight(name, dtype, shape, _checkpoint_source(ckpt, name))


def _params(prefix: str, bias: bool) -> list[str]:
    """A linear's weight, and its bias when the model has one."""
    return [prefix + ".weight"] + ([prefix + ".bias"] if bias else [])


def build_graph(m: ModelConfig, build: BuildConfig, ckpt) -> Graph:
    g = Graph()
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")
    declare_weights(g, m, build.dtype, ckpt)
    eps, hd = m.rms_norm_eps, m.head_dim
    step = ["positions", "slot_mapping", "block_tables", "context_lens", "query_start"]

    (h,) = g.call("embedding", ["input_ids", "embed.weight"], ["embed"])
    for layer in range(m.num_layers):
        p = f"layers.{layer}."
        (x,) = g.call("rmsnorm", [h, p + "attn_norm.weight"], [p + "attn_in"], eps=eps)
        qkv = []
        for part in ("q", "k", "v"):
            qkv += g.call("linear", [x, *_params(p + part, m.attention_bias)], [p + part])
        q, k, v = qkv
        if m.qk_norm:
            (q,) = g.call("head_rmsnorm", [q, p + "q_norm.weight"], [p + "q_normed"], eps=eps, head_dim=hd)
            (k,) = g.call("head_rmsnorm", [k, p + "k_norm.weight"], [p + "k_normed"], eps=eps, head_dim=hd)
        (q,) = g.call("rope", [q, "positions"], [p + "q_rot"], **m.rope_attrs)
        (k,) = g.call("rope", [k, "positions"], [p + "k_rot"], **m.rope_attrs)
        (a,) = g.call("attention", [q, k, v, *step], [p + "attn"], layer=layer,
                      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=hd,
                      scale=hd ** -0.5, rope=None)
        (o,) = g.call("linear", [a, *_params(p + "o", m.o_bias)], [p + "attn_out"])
        (h,) = g.call("add", [h, o], [p + "post_attn"])
        (x,) = g.call("rmsnorm", [h, p + "mlp_norm.weight"], [p + "mlp_in"], eps=eps)
        (gate,) = g.call("linear", [x, *_params(p + "gate", m.mlp_bias)], [p + "gate"])
        (up,) = g.call("linear", [x, *_params(p + "up", m.mlp_bias)], [p + "up"])
        (act,) = g.call("silu", [gate], [p + "gate_act"])
        (act,) = g.call("mul", [act, up], [p + "mlp_act"])
        (d,) = g.call("linear", [act, *_params(p + "down", m.mlp_bias)], [p + "mlp_out"])
        (h,) = g.call("add", [h, d], [p + "out"])
    (n,) = g.call("rmsnorm", [h, "final_norm.weight"], ["final_norm"], eps=eps)
    head = "embed.weight" if m.tie_word_embeddings else "lm_head.weight"
    (logits,) = g.call("linear", [n, head], ["logits_all"])
    (last,) = g.call("gather_last", [logits, "last_token_index"], ["logits_last"])
    g.call("cast", [last], ["logits"], dtype="float32")
    g.values["logits"].kind = "output"
    return g
