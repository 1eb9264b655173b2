"""Mixture of experts: moe(x, router_logits, gate_up, down[, bias][, shared, shared_gate]).

Each token goes to the top_k experts of its scores, softmax(router_logits) (float32); an
expert is an act(gate) * up MLP with weights gate_up [E, 2I, H] (the gate's I rows, then the
up's) and down [E, H, I]; the token's output is the sum of its experts' outputs, each times
its routing weight, its score. As HuggingFace's Mixtral, Qwen2/3-MoE, OLMoE, Granite MoE,
GLM-4.5 and ERNIE 4.5 MoE compute it:
  - `scoring` "sigmoid" (GLM-4.5, DeepSeek-V3's without groups): the scores are
    sigmoid(router_logits) (float32); "sparsemixer" (Phi-3.5-MoE, top_k 2, `eps` its jitter):
    each round picks the largest logit m left, and weights it by its softmax among the logits x
    left that are near it, (m - x) / max(|x|, m) <= 2 eps;
  - `bias` (an input, [E] float32: the e_score_correction_bias of GLM-4.5 and ERNIE 4.5): the
    top_k are picked by score + bias, still weighted by their scores;
  - `renormalize`: the top_k weights are divided by their sum (norm_topk_prob; + 1e-20 for
    sigmoid scores); then times `routed_scale` where given;
  - `round_weights`: the routing weights are rounded to the activations' dtype first (Qwen,
    OLMoE; Mixtral keeps them in float32);
  - an expert's output is rounded to the dtype after its down projection and again after the
    weight; the token's sum is taken in the dtype, experts in ascending id order (index_add_);
  - with `shared` (the shared expert's MLP output) and `shared_gate` ([T, 1] logits, Qwen2-MoE):
    out + sigmoid(shared_gate) * shared, each op rounded to the dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of

ACTS = ("silu", "gelu_tanh")
SCORINGS = ("softmax", "sigmoid", "sparsemixer")


def _moe_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    _, logits = of(graph, node.inputs[1])
    _, gate_up = of(graph, node.inputs[2])
    _, down = of(graph, node.inputs[3])
    expect(len(gate_up) == 3 and len(down) == 3 and gate_up[0] == down[0], node,
           f"expert weights {gate_up} and {down} are not [E, 2I, H] and [E, H, I]")
    experts, k = gate_up[0], node.attrs["top_k"]
    expect(gate_up[2] == shape[-1] and down[1] == shape[-1] and gate_up[1] == 2 * down[2], node,
           f"expert weights {gate_up} and {down} do not take width {shape[-1]}")
    expect(logits == (*shape[:-1], experts), node, f"router logits {logits} are not [T, {experts}]")
    expect(1 <= k <= experts, node, f"top_k {k} is not within 1..{experts}")
    expect(node.attrs.get("act", "silu") in ACTS, node, f"act {node.attrs.get('act')!r}")
    expect(node.attrs.get("scoring", "softmax") in SCORINGS, node,
           f"scoring {node.attrs.get('scoring')!r}")
    bias, shared = extras(node)
    expect(len(node.inputs) == 4 + (bias is not None) + 2 * (shared is not None), node,
           "inputs past down: the bias where the op has one, then the shared expert's pair")
    if bias is not None:
        expect(of(graph, bias) == ("float32", (experts,)), node, f"bias is not float32 [{experts}]")
    if shared is not None:
        expect(of(graph, shared[0])[1] == shape and of(graph, shared[1])[1] == (*shape[:-1], 1),
               node, "the shared expert takes its output [T, H] and its gate's logits [T, 1]")
    return [(dtype, shape)]


def split_extras(items, has_bias) -> tuple:
    """(the correction bias, (the shared expert's output, its gate's logits)) among a moe
    node's inputs past down (names or tensors), each None where it has none."""
    rest = list(items)
    bias = rest.pop(0) if has_bias else None
    return bias, (tuple(rest) or None)


def extras(node) -> tuple[str | None, tuple[str, str] | None]:
    """split_extras of a moe node's input names."""
    return split_extras(node.inputs[4:], node.attrs.get("bias"))


def sparsemixer(logits: torch.Tensor, top_k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert ids, weights) of Phi-3.5-MoE's sparsemixer as HF computes it at inference."""
    x = logits.float()
    left = x.clone()
    ids, weights = [], []
    for _ in range(top_k):
        best, pick = left.max(dim=-1, keepdim=True)
        far = (best - x) / x.abs().clamp(min=best) > 2 * eps
        gates = torch.softmax(left.masked_fill(far, float("-inf")), dim=-1)
        ids.append(pick)
        weights.append(gates.gather(1, pick))
        left = left.scatter(1, pick, float("-inf"))
    return torch.cat(ids, dim=-1), torch.cat(weights, dim=-1)


def route(logits: torch.Tensor, top_k: int, renormalize: bool, round_to: torch.dtype | None,
          scoring: str = "softmax", bias: torch.Tensor | None = None,
          routed_scale: float = 1.0, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert ids [T, k], routing weights [T, k] float32) as HF's top-k routers pick them."""
    if scoring == "sparsemixer":
        ids, weights = sparsemixer(logits, top_k, eps)
        return ids, (weights if round_to is None else weights.to(round_to).float())
    sigmoid = scoring == "sigmoid"
    scores = torch.sigmoid(logits.float()) if sigmoid else torch.softmax(logits.float(), dim=-1)
    choice = scores if bias is None else scores + bias
    ids = torch.topk(choice, top_k, dim=-1)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + (1e-20 if sigmoid else 0.0))
    if routed_scale != 1.0:
        weights = weights * routed_scale
    if round_to is not None:
        weights = weights.to(round_to).float()
    return ids, weights


def _moe(node, inputs, ctx):
    x, logits, gate_up, down = inputs[:4]
    a = node.attrs
    bias, shared = split_extras(inputs[4:], a.get("bias"))
    ids, weights = route(logits, a["top_k"], a["renormalize"],
                         x.dtype if a["round_weights"] else None, a.get("scoring", "softmax"),
                         bias, a.get("routed_scale", 1.0), a.get("eps", 0.0))
    act = F.silu if a.get("act", "silu") == "silu" else (lambda t: F.gelu(t, approximate="tanh"))
    out = torch.zeros_like(x)
    for e in sorted(set(ids.flatten().tolist())):
        token, slot = torch.where(ids == e)
        gate, up = F.linear(x[token], gate_up[e]).chunk(2, dim=-1)
        y = F.linear(act(gate) * up, down[e])
        out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
    if shared is not None:
        out = out + torch.sigmoid(shared[1]) * shared[0]
    return [out]


register("moe", _moe_infer, _moe)
