"""Test utilities: tiny random checkpoints and a minimal paged-KV step driver."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5)


# Every tiny family, in the order that seeds its checkpoint (conftest, test_models_vs_hf).
TINY_ARCHS = ["llama", "llama-tied", "llama-bias", "mistral", "qwen2", "qwen3", "phi3",
              "phi3-longrope", "mistral-window", "qwen2-window", "gemma", "gemma2", "gemma3",
              "gemma3-vision", "granite", "olmo2", "smollm3", "qwen2-yarn", "glm4", "olmo3",
              "exaone4", "seed_oss", "ernie4_5", "helium", "ministral", "cohere", "cohere2",
              "qwen2_5_vl", "qwen3_vl", "starcoder2", "mixtral", "qwen3_moe", "olmoe",
              "qwen2_moe", "granitemoe", "glm4_moe", "ernie4_5_moe", "phimoe"]
PHI3_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
# LongRoPE factors for TINY's heads of 16 dims at partial_rotary_factor 0.75: 6 rotated pairs.
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.0, 2.5],
            "long_factor": [1.5, 2.0, 3.0, 4.0, 5.0, 8.0]}


def tiny_config(arch: str, **overrides):
    import transformers

    kw = dict(TINY)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**kw, rope_theta=10000.0,
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 64},
                                       tie_word_embeddings=False)
    elif arch == "llama-bias":  # attention_bias puts biases on q, k, v and o; mlp_bias on the MLP
        cfg = transformers.LlamaConfig(**kw, attention_bias=True, mlp_bias=True)
    elif arch == "llama-tied":
        cfg = transformers.LlamaConfig(**kw, tie_word_embeddings=True)
    elif arch == "mistral":
        cfg = transformers.MistralConfig(**kw, sliding_window=None)
    elif arch == "mistral-window":  # Mistral 7B v0.1's sliding window, on every layer
        cfg = transformers.MistralConfig(**kw, sliding_window=16)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**kw, tie_word_embeddings=False)
    elif arch == "qwen2-window":  # a sliding window on the layers from max_window_layers on
        cfg = transformers.Qwen2Config(**kw, tie_word_embeddings=False, use_sliding_window=True,
                                       sliding_window=16, max_window_layers=1)
    elif arch == "qwen2-yarn":  # YaRN, as Qwen2.5's long-context configs add it
        cfg = transformers.Qwen2Config(**kw, tie_word_embeddings=False,
                                       rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                     "original_max_position_embeddings": 32})
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(**kw, head_dim=32, tie_word_embeddings=False)
    elif arch == "gemma":  # GELU-tanh MLP, RMSNorm by 1 + w, scaled embeddings, tied
        cfg = transformers.GemmaConfig(**kw, head_dim=16, **PHI3_IDS)
    elif arch == "gemma2":  # + sandwich norms, softcapped scores and logits, windows on even layers
        cfg = transformers.Gemma2Config(**kw, head_dim=16, **PHI3_IDS, sliding_window=16,
                                        query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                        final_logit_softcapping=3.0)
    elif arch == "gemma3":  # + q/k norms, the sliding layers' own RoPE base, linear scaling
        cfg = transformers.Gemma3TextConfig(
            **kw, head_dim=16, **PHI3_IDS, sliding_window=16, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    elif arch == "gemma3-vision":  # the multimodal checkpoint Gemma 3 4B+ ship as
        text = dict(kw, head_dim=16, sliding_window=16, query_pre_attn_scalar=24,
                    layer_types=["sliding_attention", "full_attention"])
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        cfg = transformers.Gemma3Config(text_config=text, vision_config=vision,
                                        mm_tokens_per_image=4, image_token_index=300,
                                        boi_token_index=301, eoi_token_index=302, **PHI3_IDS)
    elif arch == "granite":  # Llama with scalar multipliers on embeddings, scores, residual, logits
        cfg = transformers.GraniteConfig(**kw, **PHI3_IDS, embedding_multiplier=12.0,
                                         attention_multiplier=0.2, residual_multiplier=0.22,
                                         logits_scaling=8.0, tie_word_embeddings=True)
    elif arch == "olmo2":  # norms on the outputs only; q/k norms over whole projections
        cfg = transformers.Olmo2Config(**kw, **PHI3_IDS, tie_word_embeddings=False)
    elif arch == "smollm3":  # no RoPE on every other layer (no_rope_layers' zeros)
        cfg = transformers.SmolLM3Config(**kw, **PHI3_IDS, no_rope_layers=[1, 0],
                                         tie_word_embeddings=True)
    elif arch == "glm4":  # norms around attention and MLP, gate/up fused, interleaved half RoPE
        cfg = transformers.Glm4Config(**kw, **PHI3_IDS, attention_bias=True,
                                      partial_rotary_factor=0.5, tie_word_embeddings=False)
    elif arch == "olmo3":  # OLMo 2 with a sliding window on some layers, biases
        cfg = transformers.Olmo3Config(**kw, **PHI3_IDS, sliding_window=16, attention_bias=True,
                                       layer_types=["sliding_attention", "full_attention"])
    elif arch == "exaone4":  # output norms, per-head q/k norms, no RoPE on full-attention layers
        cfg = transformers.Exaone4Config(**kw, **PHI3_IDS, sliding_window=16, head_dim=16,
                                         layer_types=["sliding_attention", "full_attention"])
    elif arch == "seed_oss":  # q/k/v biases, o's by its own flag
        cfg = transformers.SeedOssConfig(**kw, **PHI3_IDS, head_dim=16, attention_bias=False,
                                         attention_out_bias=True, tie_word_embeddings=False)
    elif arch == "ernie4_5":  # GLM's interleaved RoPE over whole heads, biases by use_bias
        cfg = transformers.Ernie4_5Config(**kw, **PHI3_IDS, head_dim=16, use_bias=True)
    elif arch == "helium":
        cfg = transformers.HeliumConfig(**kw, **PHI3_IDS, head_dim=16, attention_bias=True)
    elif arch == "ministral":  # Mistral with layer_types' sliding-window layers
        cfg = transformers.MinistralConfig(**kw, **PHI3_IDS, sliding_window=16, head_dim=16,
                                           layer_types=["full_attention", "sliding_attention"])
    elif arch == "cohere":  # LayerNorm, attention and MLP side by side, interleaved RoPE
        cfg = transformers.CohereConfig(**kw, **PHI3_IDS, logit_scale=0.3)
    elif arch == "cohere2":  # + sliding-window layers with RoPE, full-attention ones without
        cfg = transformers.Cohere2Config(**kw, **PHI3_IDS, logit_scale=0.3, sliding_window=16,
                                         layer_types=["sliding_attention", "full_attention"])
    elif arch == "qwen2_5_vl":  # the multimodal Qwen2.5-VL, text only: M-RoPE is plain RoPE
        text = dict(kw, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=64, fullatt_block_indexes=[0])
        cfg = transformers.Qwen2_5_VLConfig(text_config=dict(text, **PHI3_IDS),
                                            vision_config=vision, image_token_id=300,
                                            video_token_id=301, vision_start_token_id=302)
    elif arch == "qwen3_vl":  # Qwen3-VL, text only: Qwen3's q/k norms, interleaved M-RoPE
        text = dict(kw, head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                   "mrope_interleaved": True})
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=64, deepstack_visual_indexes=[0])
        cfg = transformers.Qwen3VLConfig(text_config=dict(text, **PHI3_IDS), vision_config=vision,
                                         image_token_id=300, video_token_id=301,
                                         vision_start_token_id=302)
    elif arch == "starcoder2":  # LayerNorms with biases, ungated GELU-tanh MLP, biases, window
        cfg = transformers.Starcoder2Config(**kw, **PHI3_IDS, sliding_window=16, use_bias=True)
    elif arch == "mixtral":  # 2 of 4 experts a token, renormalized, weights kept in float32
        cfg = transformers.MixtralConfig(**kw, num_local_experts=4, num_experts_per_tok=2,
                                         tie_word_embeddings=False)
    elif arch == "qwen3_moe":  # 3 of 8 experts, renormalized; per-head q/k norms
        cfg = transformers.Qwen3MoeConfig(**kw, head_dim=16, num_experts=8, num_experts_per_tok=3,
                                          moe_intermediate_size=32, norm_topk_prob=True,
                                          tie_word_embeddings=False)
    elif arch == "olmoe":  # 4 of 8 experts, not renormalized; q/k norms over whole projections
        cfg = transformers.OlmoeConfig(**kw, **PHI3_IDS, num_experts=8, num_experts_per_tok=4,
                                       norm_topk_prob=False)
    elif arch == "qwen2_moe":  # + a gated shared expert; layer 0's MLP dense (mlp_only_layers)
        cfg = transformers.Qwen2MoeConfig(**kw, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32,
                                          shared_expert_intermediate_size=96, mlp_only_layers=[0],
                                          tie_word_embeddings=False)
    elif arch == "granitemoe":  # Granite's multipliers; experts stored stacked; 2 of 4
        cfg = transformers.GraniteMoeConfig(**kw, **PHI3_IDS, num_local_experts=4,
                                            num_experts_per_tok=2, embedding_multiplier=12.0,
                                            attention_multiplier=0.2, residual_multiplier=0.22,
                                            logits_scaling=8.0, tie_word_embeddings=True)
    elif arch == "glm4_moe":  # sigmoid routing + correction bias, scaled; a plain shared
        # expert; layer 0 dense; RoPE on half of each head; q/k norms; q/k/v biases
        cfg = transformers.Glm4MoeConfig(**kw, **PHI3_IDS, n_routed_experts=8,
                                         num_experts_per_tok=3, moe_intermediate_size=32,
                                         n_shared_experts=1, first_k_dense_replace=1,
                                         routed_scaling_factor=2.5, norm_topk_prob=True,
                                         partial_rotary_factor=0.5, use_qk_norm=True,
                                         attention_bias=True, tie_word_embeddings=False)
    elif arch == "ernie4_5_moe":  # softmax picked with a correction bias, a shared expert,
        # layer 0 dense, interleaved RoPE
        cfg = transformers.Ernie4_5_MoeConfig(**kw, **PHI3_IDS, head_dim=16, num_experts=8,
                                              num_experts_per_tok=3, moe_intermediate_size=32,
                                              moe_num_shared_experts=1, moe_layer_start_index=1,
                                              moe_layer_interval=1, use_bias=False)
    elif arch == "phimoe":  # sparsemixer's 2 of 4; LayerNorms with biases; a biased LM
        # head; LongRoPE with its own mscales
        rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_mscale": 1.2,
                "long_mscale": 1.3, "original_max_position_embeddings": 128,
                "short_factor": [1.0, 1.1, 1.3, 1.7, 2.0, 2.5, 3.0, 3.5],
                "long_factor": [1.5, 2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0]}
        cfg = transformers.PhimoeConfig(**kw, **PHI3_IDS, num_local_experts=4,
                                        router_jitter_noise=0.3, attention_bias=True,
                                        lm_head_bias=True, rope_parameters=rope,
                                        tie_word_embeddings=False)
    elif arch == "phi3":  # q/k/v and gate/up stored fused
        cfg = transformers.Phi3Config(**kw, **PHI3_IDS, tie_word_embeddings=False)
    elif arch == "phi3-longrope":  # Phi-4-mini's form: RoPE on 3/4 of each head, LongRoPE, tied
        cfg = transformers.Phi3Config(**kw, **PHI3_IDS, partial_rotary_factor=0.75,
                                      original_max_position_embeddings=128, rope_scaling=LONGROPE,
                                      tie_word_embeddings=True)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def make_tiny_tokenizer(path: Path, vocab_size: int = TINY["vocab_size"]):
    """A byte-level BPE tokenizer trained on a little English; ids 0-2 are <unk> <s> </s>."""
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = list(pydoc_data.topics.topics.values())[:40]
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def hf_auto_class(arch: str):
    """The transformers auto class that makes (and loads) a tiny checkpoint of `arch`."""
    import transformers

    if arch in ("qwen2_5_vl", "qwen3_vl"):
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def make_tiny_checkpoint(arch: str, path: Path, seed: int = 0, **overrides) -> Path:
    """A random HF model of the given family with a small tokenizer, saved with save_pretrained
    (float32)."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    model = hf_auto_class(arch).from_config(cfg, dtype=torch.float32)
    text = getattr(cfg, "text_config", cfg)  # a multimodal model's language model
    with torch.no_grad():  # HF inits norms to ones and biases to zeros: randomize all
        for p in model.parameters():  # norms around 1, everything else around 0
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] in
                                                 (text.hidden_size, getattr(text, "head_dim", 0)) else 0.0))
        for name, b in model.named_buffers():  # GLM-4.5's routers' biases: zeros at init
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.2)
    model.save_pretrained(path)
    make_tiny_tokenizer(path, text.vocab_size)
    return path


class PagedSequences:
    """Allocates KV blocks (in shuffled order) and turns (sequence, token count) lists into
    the step ABI, the way the runtime's scheduler does."""

    def __init__(self, tokens_per_block: int, max_blocks_per_seq: int, num_blocks: int, seed: int = 0):
        self.tpb, self.max_blocks = tokens_per_block, max_blocks_per_seq
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.tokens: list[list[int]] = []
        self.computed: list[int] = []
        self.blocks: list[list[int]] = []

    def add(self, tokens: list[int]) -> int:
        self.tokens.append(list(tokens))
        self.computed.append(0)
        self.blocks.append([])
        return len(self.tokens) - 1

    def step(self, plan: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        ids, pos, slots, ctx, qstart, last = [], [], [], [], [0], []
        table = np.zeros((len(plan), self.max_blocks), dtype=np.int32)
        for row, (sid, n) in enumerate(plan):
            start = self.computed[sid]
            assert start + n <= len(self.tokens[sid])
            for p in range(start, start + n):
                if p // self.tpb >= len(self.blocks[sid]):
                    self.blocks[sid].append(self.free.pop())
                ids.append(self.tokens[sid][p])
                pos.append(p)
                slots.append(self.blocks[sid][p // self.tpb] * self.tpb + p % self.tpb)
            self.computed[sid] += n
            table[row, : len(self.blocks[sid])] = self.blocks[sid]
            ctx.append(start + n)
            qstart.append(qstart[-1] + n)
            last.append(qstart[-1] - 1)
        return {"input_ids": np.array(ids, np.int32), "positions": np.array(pos, np.int32),
                "slot_mapping": np.array(slots, np.int64), "block_tables": table,
                "context_lens": np.array(ctx, np.int32), "query_start": np.array(qstart, np.int32),
                "last_token_index": np.array(last, np.int32)}


def write_gguf_tensors(writer, tensors: dict) -> None:
    """Adds {name: (array, gguf quantization type)} to a gguf.GGUFWriter and writes the file:
    F32 and F16 stored as such, other types quantized by gguf."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run_interpreted(args: list[str], timeout: int = 1200):
    """Runs `python *args` with TRITON_INTERPRET=1 (every Triton kernel on the CPU, in Triton's
    interpreter) and returns the JSON of its last output line."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_json_greedy(model, table, prompt: list[int], n: int, schema=None) -> tuple[list[int], bool]:
    """HF's greedy pick among the tokens whose bytes (`table`: the tokenizer's token table) keep
    the text a prefix of a JSON object, or of a value valid against the compiled `schema`, until
    it is complete or n tokens are out: (the tokens, whether it is complete)."""
    from kiln import _core

    state = _core.JsonObjectPrefix() if schema is None else _core.JsonObjectPrefix(schema)
    out = []
    while len(out) < n and not state.complete:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out])).logits[0, -1]
        allowed = torch.tensor([bool(table[t]) and state.copy().feed(table[t])
                                for t in range(logits.numel())])
        pick = int(torch.where(allowed, logits, -torch.inf).argmax())
        assert state.feed(table[pick])
        out.append(pick)
    return out, state.complete


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """HF greedy continuation, teacher-forced past an end id so all n tokens are compared."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def mixed_traffic(runner, model, threads: int = 6) -> None:
    """Sends from `threads` threads, at once and in random order, good requests (some streamed),
    bad ones and streams abandoned midway to `runner` (a ModelRunner over the tiny llama
    checkpoint whose HF `model` is given, with a KV pool far too small for them all, so that
    requests are preempted and resumed). Checks that every good request gets exactly the HF
    model's greedy tokens, that every bad one fails alone with its own error, and that no
    block stays in use."""
    import threading

    import pytest

    from kiln.builder.errors import KilnError

    rng = random.Random(5)
    g = torch.Generator().manual_seed(41)
    goods = [torch.randint(3, 320, (rng.randint(5, 24),), generator=g).tolist() for _ in range(12)]
    expected = [p + hf_greedy(model, p, 16) for p in goods]
    abandoned = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (9, 17, 12, 21)]
    jobs = ([("good", i, i % 3 == 0) for i in range(12)]
            + [("bad", [], "empty"), ("bad", [5] * 200, "max_seq_len"),
               ("bad", [5, 100000], "vocab"), ("bad", [7] * 150, "max_seq_len")]
            + [("abandon", p, None) for p in abandoned])
    rng.shuffle(jobs)
    outcomes: dict[int, object] = {}
    start = threading.Barrier(threads)

    def run(job):
        kind, what, extra = job
        if kind == "good":
            out = runner.generate([goods[what]], max_new_tokens=16, end_id=-1, streaming=extra)
            if extra:
                for out in out:
                    pass
            return out[0, 0].tolist()
        if kind == "bad":
            with pytest.raises(KilnError, match=extra):
                runner.generate([what], max_new_tokens=8, end_id=-1)
            return None
        stream = runner.generate([what], max_new_tokens=40, end_id=-1, streaming=True)
        for k, _ in enumerate(stream):
            if k == 2:
                break
        stream.close()
        return None

    def worker(w):
        start.wait()
        for n in range(w, len(jobs), threads):
            try:
                outcomes[n] = run(jobs[n])
            except BaseException as e:  # noqa: BLE001  reported below, with its job
                outcomes[n] = e

    workers = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for n, job in enumerate(jobs):
        assert not isinstance(outcomes[n], BaseException), (job, outcomes[n])
        if job[0] == "good":
            assert outcomes[n] == expected[job[1]], job
    assert runner.iteration_stats()["total_preemptions"] > 0
    for _ in range(100):  # abandoned streams are cancelled as the executor gets to them
        if runner.kv_cache_stats()["used_blocks"] == 0:
            break
        threading.Event().wait(0.02)
    assert runner.kv_cache_stats()["used_blocks"] == 0
