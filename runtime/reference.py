"""The CPU reference backend: runs an engine's plan op by op with the ops' torch references.

It is the oracle for every GPU kernel and the backend of the runtime on hosts with no GPU.
"""
from __future__ import annotations

import numpy as np
import torch

from kiln.builder import ops
from kiln.builder.engine import Engine
from kiln.builder.ir import torch_dtype

STEP_KEYS = ("input_ids", "positions", "slot_mapping", "block_tables", "context_lens",
             "query_start", "last_token_index")


class ReferenceBackend:
    """Holds the paged KV cache and evaluates the plan for one step at a time."""

    def __init__(self, engine: Engine, num_blocks: int) -> None:
        m, b = engine.config.model, engine.config.build
        self.engine = engine
        self.num_blocks = num_blocks
        self.graph = engine.graph
        self.weights = engine.weights
        # Unwritten cache slots hold NaN so that reading one poisons the logits visibly (an
        # int8 cache has no NaN: it starts at zero).
        kv_dtype = torch_dtype(b.kv_dtype)
        self.kv_cache = torch.full(
            (m.num_layers, 2, num_blocks, m.num_kv_heads, b.tokens_per_block, m.head_dim),
            0 if kv_dtype == torch.int8 else float("nan"), dtype=kv_dtype)
        self.ctx = ops.StepContext(kv_cache=self.kv_cache)
        self.outputs = self.graph.of_kind("output")

    @classmethod
    def for_engine(cls, engine: Engine, max_batch_size: int | None = None,
                   num_blocks: int | None = None) -> "ReferenceBackend":
        """Enough blocks for every sequence of a full batch at max_seq_len (plus one spare)."""
        b = engine.config.build
        if num_blocks is None:
            num_blocks = (max_batch_size or b.max_batch_size) * b.max_blocks_per_seq + 1
        return cls(engine, num_blocks)

    @torch.inference_mode()
    def run(self, step: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(self.weights)
        env.update(step)
        for node in self.graph.nodes:
            results = ops.run(node, [env[name] for name in node.inputs], self.ctx)
            env.update(zip(node.outputs, results))
        return {name: env[name] for name in self.outputs}

    def forward(self, step: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(step[k])) for k in STEP_KEYS}
        return self.run(tensors)["logits"].numpy()
