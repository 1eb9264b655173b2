"""Kiln postprocessing for Triton's Python backend: token ids to text, one response at a time.

The engine model sends with each response the few tokens it sent before (context_ids), so this
model stays stateless and still decodes characters split across responses correctly: a partial
character is held back until it completes. Each beam ([batch, beam, ...]) is decoded on its own,
its first output_lengths tokens; finish_reason, output_log_probs and cum_log_probs pass through.
Parameter: tokenizer_dir.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from kiln.runtime.serve.detokenizer import text_delta


def _input(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(
            config["parameters"]["tokenizer_dir"]["string_value"])

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(request)))
            except Exception as e:  # a bad request fails alone
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
        return responses

    def _one(self, request):
        ids, context = _input(request, "output_ids"), _input(request, "context_ids")
        lengths, reasons = _input(request, "output_lengths"), _input(request, "finish_reason")
        texts = []
        for rows, contexts, counts, whys in zip(ids, context, lengths, reasons):
            texts.append([])
            for row, ctx, n, why in zip(rows, contexts, counts, whys):
                why = why.decode() if isinstance(why, bytes) else str(why)
                texts[-1].append(text_delta(self._decode, ctx.tolist(), row[:n].tolist(),
                                            final=why != "not_finished").encode("utf-8"))
        return [
            pb_utils.Tensor("text_output", np.array(texts, dtype=np.object_)),
            pb_utils.Tensor("out_finish_reason", reasons),
            pb_utils.Tensor("out_output_log_probs", _input(request, "output_log_probs")),
            pb_utils.Tensor("out_cum_log_probs", _input(request, "cum_log_probs")),
        ]
