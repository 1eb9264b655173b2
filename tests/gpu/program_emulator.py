"""Runs an engine's GPU program (the "kernels" header section) in Python, as the C++ plan
executor does: the same launches, arguments, grids, conditions and buffers, with the Triton
kernels launched by name (Triton's interpreter on CPU tensors under TRITON_INTERPRET=1, its JIT on
CUDA tensors) and the GEMMs done by torch. It checks the lowering (arena offsets and views,
aliasing, strides, symbol expressions) end to end where no GPU is available, and serves as a
second executor to compare the C++ one with on a GPU.
"""
from __future__ import annotations

import collections
import importlib

import numpy as np
import torch

from kiln.builder.kernels.rope import v_transposed
from kiln.builder.kernels.symbols import evaluate, leading_decodes

TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
         "i32": torch.int32, "i64": torch.int64, "i8": torch.int8, "u8": torch.uint8,
         "fp8e4nv": torch.float8_e4m3fn}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int8": torch.int8, "uint8": torch.uint8, "float8_e4m3fn": torch.float8_e4m3fn}


class ProgramEmulator:
    """`forward(step)` like a backend; `num_sms` plays NSM (it decides the KV splits).
    `gemm_alternative`: the index of the alternative each GEMM runs when M allows it (the C++
    executor picks one by timing), or a kernel's name (the first alternative that launches it);
    None: every GEMM through torch."""

    def __init__(self, engine, num_blocks: int, device: str = "cpu", num_sms: int = 132,
                 gemm_alternative: int | None = None,
                 programs_per_sm: dict[int, int] | None = None) -> None:
        self.gemm_alternative = gemm_alternative
        self.h = h = engine.kernels
        # The resident symbols (programs of a kernel the GPU runs at once; the C++ executor asks
        # the driver): NSM times programs_per_sm[the kernel's warps], by default 12 // warps.
        per_sm = programs_per_sm or {}
        self.resident = {name: num_sms * per_sm.get(h["kernels"][key]["num_warps"],
                                                     max(1, 12 // h["kernels"][key]["num_warps"]))
                         for name, key in h.get("resident", [])}
        self.device, self.num_sms, self.num_blocks = device, num_sms, num_blocks
        self.weights = {n: w.to(device) for n, w in engine.weights.items()}
        # 0xFF bytes are NaN in every float dtype: an activation read before it is written shows.
        self.arena = torch.full((h["arena_bytes"],), 255, dtype=torch.uint8, device=device)
        kv = h["kv_cache"]
        # 0xFF bytes: NaN in every 16-bit float dtype, so a slot read before it is written
        # shows. An 8-bit cache starts zeroed, as the executor's does: its V is read by whole
        # blocks (attention._attend), slots past a sequence's end too, weighted 0.
        self.kv = torch.full((kv["num_layers"], 2, num_blocks, kv["num_kv_heads"],
                              kv["tokens_per_block"], kv["head_dim"] * DTYPES[kv["dtype"]].itemsize),
                             0 if v_transposed(kv["dtype"]) else 255, dtype=torch.uint8,
                             device=device).view(DTYPES[kv["dtype"]])
        lim = h["limits"]
        at_limit = {"T": lim["max_num_tokens"], "B": lim["max_batch_size"],
                    "MAXCTX": lim["max_seq_len"], "MAXQ": lim["max_num_tokens"],
                    "MAXBLK": lim["max_blocks_per_seq"], "NSM": num_sms,
                    "BD": lim["max_batch_size"], "LOGITS": 1, **self.resident}
        self.scratch = {name: torch.full((max(evaluate(f, at_limit) for f in sizes) // 4 + 1,),
                                         float("nan"), dtype=torch.float32, device=device)
                        for name, sizes in h["scratch"].items()}
        for name in h.get("zeroed_scratch", []):
            self.scratch[name].zero_()
        self.consts = {name: torch.tensor(t["values"], dtype=torch.float32, device=device)
                       for name, t in h["constants"].items()}
        self.fns = {}
        for key, entry in h["kernels"].items():
            module, name = entry["fn"].rsplit(".", 1)
            self.fns[key] = getattr(importlib.import_module(module), name)
        self.inputs: dict[str, torch.Tensor] = {}
        self.launched: collections.Counter = collections.Counter()  # kernel key: launches run

    def pointer(self, ref: dict, dtype: torch.dtype) -> torch.Tensor:
        """A tensor whose first element is the referenced address."""
        if "arena" in ref:
            return self.arena[ref["arena"]:].view(dtype)
        if "input" in ref:
            return self.inputs[ref["input"]]
        if "weight" in ref:
            return self.weights[ref["weight"]]
        if "kv" in ref:
            return self.kv[ref["kv"], ref["half"]]
        if "scratch" in ref:
            return self.scratch[ref["scratch"]][ref.get("offset", 0) // 4:].view(dtype)
        if "const" in ref:
            return self.consts[ref["const"]]
        raise ValueError(f"unknown reference {ref}")

    def _launch(self, step: dict, symbols: dict) -> None:
        if step["when"] is not None and not evaluate(step["when"], symbols):
            return
        grid = tuple(evaluate(g, symbols) for g in step["grid"])
        if min(grid) <= 0:
            return
        entry = self.h["kernels"][step["kernel"]]
        self.launched[step["kernel"]] += 1
        runtime = [n for n, t in entry["signature"].items() if t != "constexpr"]
        kwargs = dict(entry["constexprs"])
        for name, arg in zip(runtime, step["args"]):
            t = entry["signature"][name]
            if "i32" in arg:
                kwargs[name] = evaluate(arg["i32"], symbols)
            elif "f32" in arg:
                kwargs[name] = arg["f32"]
            else:
                kwargs[name] = self.pointer(arg, TORCH[t.lstrip("*")])
        self.fns[step["kernel"]][grid](**kwargs, num_warps=entry["num_warps"],
                                       num_stages=entry["num_stages"])

    def _gemm(self, g: dict, symbols: dict) -> None:
        m = evaluate(g["m"], symbols)
        alternatives = g.get("alternatives") or []
        if isinstance(self.gemm_alternative, str):  # the first that launches that kernel
            named = [i for i, alt in enumerate(alternatives)
                     if any(self.h["kernels"][s["kernel"]]["fn"].endswith(self.gemm_alternative)
                            for s in alt["steps"])]
            chosen = named[0] if named else len(alternatives)
        else:
            chosen = self.gemm_alternative
        if chosen is not None and chosen < len(alternatives):
            alternative = alternatives[chosen]
            if alternative.get("min_m", 1) <= m <= alternative["max_m"]:
                for step in alternative["steps"]:
                    self._launch(step, symbols)
                return
        for step in g.get("prologue") or []:
            self._launch(step, symbols)
        dtype = DTYPES[g["dtype"]]
        in_dtype = DTYPES[g.get("in_dtype") or g["dtype"]]
        a = torch.as_strided(self.pointer(g["a"], in_dtype), (m, g["k"]), (g["lda"], 1))
        out = torch.as_strided(self.pointer(g["out"], dtype), (m, g["n"]), (g["ldc"], 1))
        bias = self.pointer(g["bias"], dtype)[: g["n"]] if g["bias"] else None
        w = self.pointer(g["w"], in_dtype).reshape(-1)[: g["n"] * g["k"]].view(g["n"], g["k"])
        y = a.float() @ w.float().T
        if g.get("in_dtype"):  # FP8: per-tensor dequantization scales
            y = y * (self.pointer(g["a_scale"], torch.float32)[0]
                     * self.pointer(g["w_scale"], torch.float32)[0])
        y = (y if bias is None else y + bias.float()).to(dtype)
        if g.get("residual"):  # a linear with a residual: the product rounded, then the sum
            res = torch.as_strided(self.pointer(g["residual"], dtype), (m, g["n"]), (g["ldr"], 1))
            y = (y.float() + res.float()).to(dtype)
        out.copy_(y)
        for step in g.get("epilogue") or []:
            self._launch(step, symbols)

    def forward(self, step: dict, logits: bool = True) -> np.ndarray | None:
        """The step's float32 logits; `logits` False runs it as a step whose host reads only
        the greedy picks (LOGITS 0) and returns None."""
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                       for k, v in step.items()}
        qs = step["query_start"]
        symbols = {"T": len(step["input_ids"]), "B": len(step["context_lens"]),
                   "MAXCTX": int(step["context_lens"].max()), "MAXQ": int(np.diff(qs).max()),
                   "MAXBLK": step["block_tables"].shape[1], "NSM": self.num_sms,
                   "BD": leading_decodes(qs), "LOGITS": int(logits), **self.resident}
        for name, formula in self.h["derived"]:
            symbols[name] = evaluate(formula, symbols)
        for item in self.h["program"]:
            if item["kind"] == "gemm":
                self._gemm(item, symbols)
            else:
                self._launch(item, symbols)
        out = self.h["outputs"]["logits"]
        rows = evaluate(out["rows"], symbols)
        values = self.pointer(out["ref"], torch.float32)[: rows * out["cols"]]
        select = self.h.get("select")
        if select:  # the greedy pick: tokens then log-probs
            ref = select["ref"]
            self.picks = (self.pointer(ref, torch.int32)[:rows].cpu().numpy().copy(),
                          self.pointer(dict(ref, offset=4 * select["capacity"]),
                                       torch.float32)[:rows].cpu().numpy().copy())
        return values.view(rows, out["cols"]).cpu().numpy().copy() if logits else None
