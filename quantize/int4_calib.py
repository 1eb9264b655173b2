"""Kiln's int4 weight quantizer inside modelopt's AWQ and GPTQ.

modelopt's int4 is symmetric (amax / 7); Kiln's int4 groups are asymmetric, each spanning its
minimum to its maximum with a float offset (pack.int4_min_max, GGUF Q4_1's form). The int4
modes' weight quantizers take MIN_MAX_BACKEND, a modelopt quantizer backend, so that AWQ's
scale search and GPTQ's updates evaluate the grid the engine stores:

  - AWQ (awq_lite) quantizes each candidate's scaled weight with its own groups' ranges;
    UnscaledCandidate adds the candidate awq_lite lacks, the weight as it is;
  - GPTQ takes each group's range from the weight before its updates (as modelopt's static
    amax is) and keeps it on the quantizer (`_kiln_range`), so that every updated column
    lands on the grid the engine stores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.quantize import pack

MIN_MAX_BACKEND = "kiln_int4_min_max"


def register_min_max_backend() -> None:
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import (
        is_registered_quant_backend, register_quant_backend)
    from modelopt.torch.quantization.utils.calib_utils import register_gptq_helper

    if not is_registered_quant_backend(MIN_MAX_BACKEND):
        register_quant_backend(MIN_MAX_BACKEND, min_max_fake_quant)
        register_gptq_helper(MIN_MAX_BACKEND, _frozen_range_gptq_helper())


def min_max_fake_quant(inputs: torch.Tensor, quantizer) -> torch.Tensor:
    """The weight as the engine stores it: asymmetric int4 groups of quantizer.block_sizes[-1]
    along the last axis, each from its own minimum and maximum, or from the range frozen on
    the quantizer (`_kiln_range`: scales and offsets [N, K // G])."""
    group = quantizer.block_sizes[-1]
    w = inputs.float().reshape(-1, group)
    frozen = getattr(quantizer, "_kiln_range", None)
    scales, offsets = frozen if frozen is not None else pack.int4_min_max(w, group)
    s, o = scales.reshape(-1, 1).to(w.device), offsets.reshape(-1, 1).to(w.device)
    u = torch.round((w - o) * torch.reciprocal(s)).clamp(-pack.INT4_SYMMETRIC_ZERO,
                                                         pack.INT4_MAX)
    return (u * s + o).reshape(inputs.shape).to(inputs.dtype)


def scales_and_offsets(lin, weight: torch.Tensor, group: int):
    """(scales, offsets) float32 [N, K // G] of a calibrated linear's int4 weight."""
    frozen = getattr(lin.weight_quantizer, "_kiln_range", None)
    scales, offsets = frozen if frozen is not None else pack.int4_min_max(weight, group)
    return scales.cpu(), offsets.cpu()


def _frozen_range_gptq_helper():
    from modelopt.torch.quantization.utils.calib_utils import GPTQHelper

    class FrozenRangeGPTQHelper(GPTQHelper):
        def update_weights(self, block_size, perc_damp):
            quantizer = self.module.weight_quantizer
            w = self.module.weight.detach().float()
            quantizer._kiln_range = pack.int4_min_max(w, quantizer.block_sizes[-1])
            super().update_weights(block_size, perc_damp)

    return FrozenRangeGPTQHelper


class UnscaledCandidate:
    """AWQ's search with the weight left unscaled as one more candidate (the original AWQ's
    ratio 0). modelopt's awq_lite scales by activations and weights both, s = x^a / w^(1-a),
    so it never tries the weight as it is, which is the exact one for a weight already on a
    16-level grid per group (a Q4_1 checkpoint, groups of 32). A hook on each linear sums,
    over awq_lite's search pass, the loss awq_lite sums for its candidates (the mean squared
    difference from the unquantized output); `settle` then undoes AWQ's scaling where the
    unscaled weight's loss is the lower. Needs awq_lite's `debug` (it keeps its losses)."""

    def __init__(self) -> None:
        self.loss: dict[torch.nn.Module, torch.Tensor] = {}
        self._steps: dict[torch.nn.Module, int] = {}
        self._hooks: list = []

    def forward_loop(self, loop):
        """`loop`, hooking the linears on its first call (they are modelopt's by then)."""
        def run(module) -> None:
            if not self._hooks:
                self._hooks = [lin.register_forward_hook(self._hook)
                               for lin in module.linears.values() if hasattr(lin, "awq_lite")]
            loop(module)
        return run

    def _hook(self, lin, args, out) -> None:
        helper = getattr(lin, "awq_lite", None)
        if helper is None or helper.num_search_steps == self._steps.get(lin, 0):
            return  # the caching pass, or a forward outside the search
        self._steps[lin] = helper.num_search_steps
        w = min_max_fake_quant(lin.weight.detach(), lin.weight_quantizer)
        loss = (F.linear(args[0], w, lin.bias) - out).float().pow(2).mean()
        self.loss[lin] = self.loss.get(lin, 0.0) + loss

    def settle(self, module, original) -> list[str]:
        """Undoes AWQ's scaling where the unscaled weight lost less; `original(key)` is a
        linear's weight before AWQ. Returns the keys of the linears left unscaled."""
        for hook in self._hooks:
            hook.remove()
        unscaled = []
        for key, lin in module.linears.items():
            helper = getattr(lin, "awq_lite", None)
            if helper is None:
                continue
            del lin.awq_lite
            if not helper.is_enabled or helper.best_alpha is None or lin not in self.loss:
                continue
            if float(self.loss[lin]) < float(helper.loss[helper.best_alpha]):
                with torch.no_grad():
                    lin.weight.copy_(original(key).to(lin.weight))
                lin.input_quantizer._enable_pre_quant_scale = False
                unscaled.append(key)
        return unscaled
