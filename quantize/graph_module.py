"""A Kiln graph as a torch module, so that modelopt can calibrate and fake-quantize the plan
itself: its fused GEMMs (qkv, gate_up) are the nn.Linear modules modelopt sees, so fused
weights get one shared smoothing and one set of scales by construction.

Decoder linears become `linears[<weight name>]` (dots as underscores); with `kv_quantizers`,
each attention layer gets a KVCacheInput `kv[<layer>]` that K (after RoPE) and V pass through
on their way into the cache: modelopt converts it into a module with k_bmm_quantizer and
v_bmm_quantizer (kiln.quantize.calibrate), as it does HF attention. Every other op runs its
torch reference.
"""
from __future__ import annotations

import torch
from torch import nn

from kiln.builder import ops
from kiln.builder.ir import Graph, Node
from kiln.builder.ops.rope import apply_rope


class KVCacheInput(nn.Module):
    """Where K and V enter the cache: the identity until modelopt quantizes it."""

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


def module_key(weight_name: str) -> str:
    return weight_name.replace(".", "_")


class GraphModule(nn.Module):
    def __init__(self, graph: Graph, linear_nodes: list[Node], kv_quantizers: bool = False,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.graph = graph
        self.device = torch.device(device)
        self.linears = nn.ModuleDict()
        self._by_weight: dict[str, str] = {}
        for node in linear_nodes:
            w = node.inputs[1]
            weight = graph.sources[w].load(torch.float32)
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=len(node.inputs) == 3,
                            device=self.device)
            with torch.no_grad():
                lin.weight.copy_(weight)
                if lin.bias is not None:
                    lin.bias.copy_(graph.sources[node.inputs[2]].load(torch.float32))
            self.linears[module_key(w)] = lin
            self._by_weight[w] = module_key(w)
        owned = {n.inputs[1] for n in linear_nodes} | {n.inputs[2] for n in linear_nodes
                                                       if len(n.inputs) == 3}
        # Plain tensors, not buffers: modelopt must see only the linears' parameters.
        self.weights = {name: graph.sources[name].load(torch.float32).to(self.device)
                        for name in graph.of_kind("weight") if name not in owned}
        self.kv = nn.ModuleDict({str(n.attrs["layer"]): KVCacheInput()
                                 for n in graph.nodes if kv_quantizers and n.op == "attention"})

    def linear(self, weight_name: str) -> nn.Module:
        return self.linears[self._by_weight[weight_name]]

    def forward(self, tokens: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Prefills each row of `tokens` [B, L] as its own sequence; returns float32 logits of
        each sequence's last token [B, V], or of every token [B * L, V]."""
        step = sequences_step(tokens, all_logits)
        env: dict[str, torch.Tensor] = dict(self.weights)
        env.update({k: v.to(self.device) for k, v in step.items()})
        ctx = ops.StepContext(kv_cache=self._kv_cache(*tokens.shape))
        for node in self.graph.nodes:
            if node.op == "linear" and node.inputs[1] in self._by_weight:
                results = [self.linear(node.inputs[1])(env[node.inputs[0]])]
            elif node.op == "attention" and str(node.attrs["layer"]) in self.kv:
                results = self._attention(node, [env[n] for n in node.inputs], ctx)
            else:
                results = ops.run(node, [env[n] for n in node.inputs], ctx)
            env.update(zip(node.outputs, results))
        return env[self.graph.of_kind("output")[0]]

    def _attention(self, node: Node, inputs: list[torch.Tensor], ctx) -> list[torch.Tensor]:
        q, k, v, positions = inputs[:4]
        if node.attrs.get("rope"):
            q = apply_rope(q, positions, node.attrs["rope"])
            k = apply_rope(k, positions, node.attrs["rope"])
        k, v = self.kv[str(node.attrs["layer"])](k, v)
        plain = Node("attention", node.inputs[:8], node.outputs, dict(node.attrs, rope=None))
        return ops.run(plain, [q, k, v, *inputs[3:8]], ctx)

    def _kv_cache(self, num_seqs: int, length: int) -> torch.Tensor:
        layers = [n.attrs for n in self.graph.nodes if n.op == "attention"]
        a = layers[0]
        return torch.zeros(len(layers), 2, num_seqs, a["num_kv_heads"], length, a["head_dim"],
                           device=self.device)


def sequences_step(tokens: torch.Tensor, all_logits: bool = False) -> dict[str, torch.Tensor]:
    """The step that prefills each row of `tokens` [B, L] as its own sequence, one KV block of
    L slots each; logits for each sequence's last token, or for every token."""
    b, length = tokens.shape
    t = b * length
    starts = torch.arange(b, dtype=torch.int32) * length
    return {
        "input_ids": tokens.reshape(-1).to(torch.int32),
        "positions": torch.arange(length, dtype=torch.int32).repeat(b),
        "slot_mapping": torch.arange(t, dtype=torch.int64),
        "block_tables": torch.arange(b, dtype=torch.int32)[:, None],
        "context_lens": torch.full((b,), length, dtype=torch.int32),
        "query_start": torch.arange(b + 1, dtype=torch.int32) * length,
        "last_token_index": (torch.arange(t, dtype=torch.int32) if all_logits
                             else starts + length - 1),
    }
