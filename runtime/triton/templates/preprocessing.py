"""Kiln preprocessing for Triton's Python backend: text to token ids with the engine's tokenizer.

Inputs: text_input, optional stop_words and bad_words (strings), embedding_bias_words and
embedding_bias_weights (a bias for each word's tokens, as TensorRT-LLM's preprocessing takes them)
and apply_chat_template (wrap the text as one user message in the tokenizer's chat template).
Outputs: input_ids (padded with 0 past each row's input_lengths), stop_words_list and
bad_words_list in TensorRT-LLM's [2, L] layout, embedding_bias ([vocab]: each word's weight
added at each of its tokens, ids without the tokenizer's special tokens; [0] when no word is
given). Parameter: tokenizer_dir.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _texts(tensor):
    """A [batch, k] STRING tensor as lists of str."""
    return [[v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in row]
            for row in tensor.as_numpy()]


def _words_list(words):
    """[[ids], ...] -> [2, L]: the ids concatenated, then each word's end offset, -1 padded."""
    flat, offsets = [], []
    for w in words:
        flat += w
        offsets.append(len(flat))
    width = max(len(flat), len(offsets))
    out = np.zeros((2, width), dtype=np.int32)
    out[1, :] = -1
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(
            config["parameters"]["tokenizer_dir"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(request)))
            except Exception as e:  # a bad request fails alone
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
        return responses

    def _encode(self, text, chat):
        if not chat:
            return self.tokenizer(text)["input_ids"]
        if not self.tokenizer.chat_template:
            raise ValueError("apply_chat_template is set but the tokenizer has no chat template")
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _one(self, request):
        texts = _texts(pb_utils.get_input_tensor_by_name(request, "text_input"))
        chat_t = pb_utils.get_input_tensor_by_name(request, "apply_chat_template")
        chat = [False] * len(texts) if chat_t is None else [bool(v) for v in chat_t.as_numpy().reshape(-1)]
        ids = [self._encode(row[0], c) for row, c in zip(texts, chat)]
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int32)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
        return [
            pb_utils.Tensor("input_ids", input_ids),
            pb_utils.Tensor("input_lengths", np.array([[len(x)] for x in ids], dtype=np.int32)),
            pb_utils.Tensor("stop_words_list", self._word_lists(request, "stop_words", len(ids))),
            pb_utils.Tensor("bad_words_list", self._word_lists(request, "bad_words", len(ids))),
            pb_utils.Tensor("embedding_bias", self._embedding_bias(request, len(ids))),
        ]

    def _embedding_bias(self, request, batch):
        """[batch, vocab] float32: embedding_bias_weights[i] added at each token of
        embedding_bias_words[i] (empty words pad shorter rows); [batch, 0] without words."""
        words = pb_utils.get_input_tensor_by_name(request, "embedding_bias_words")
        weights = pb_utils.get_input_tensor_by_name(request, "embedding_bias_weights")
        if words is None and weights is None:
            return np.zeros((batch, 0), dtype=np.float32)
        if words is None or weights is None:
            raise ValueError("embedding_bias_words and embedding_bias_weights go together; "
                             "send both or neither")
        word_rows, weight_rows = _texts(words), weights.as_numpy().reshape(batch, -1)
        out = np.zeros((batch, len(self.tokenizer)), dtype=np.float32)
        for row, (ws, vs) in enumerate(zip(word_rows, weight_rows)):
            if len(ws) != len(vs):
                raise ValueError(f"{len(ws)} embedding_bias_words but {len(vs)} "
                                 "embedding_bias_weights; give one weight a word")
            for word, weight in zip(ws, vs):
                if word != "":
                    for token in self.tokenizer(word, add_special_tokens=False)["input_ids"]:
                        out[row, token] += weight
        return out

    def _word_lists(self, request, name, batch):
        """The STRING input `name` ([batch, k]; empty entries pad shorter rows) as TensorRT-LLM's
        [batch, 2, L] word lists."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        rows = [[] for _ in range(batch)] if tensor is None else _texts(tensor)
        lists = [_words_list([self.tokenizer(s, add_special_tokens=False)["input_ids"]
                                   for s in row if s != ""]) for row in rows]
        width = max(x.shape[1] for x in lists)
        out = np.full((len(lists), 2, width), -1, dtype=np.int32)
        for i, x in enumerate(lists):
            out[i, 0, :] = 0
            out[i, :, : x.shape[1]] = x
        return out
