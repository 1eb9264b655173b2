"""ModelConfig.from_hf on the config.json forms of the families Kiln builds, and its refusals."""
from __future__ import annotations

import math

import pytest
import torch

from kiln.builder.errors import KilnError
from kiln.builder.models import ModelConfig
from kiln.builder.ops.rope import inv_freq, rotary_permutation

SHORT = [1.0 + i / 10 for i in range(48)]
LONG = [2.0 + i for i in range(48)]


def phi35_mini(**changes) -> dict:
    """The layout of Phi-3.5-mini's config.json (transformers 4 names; factors made up)."""
    config = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
              "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
              "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 262144,
              "rope_scaling": {"type": "longrope", "short_factor": SHORT, "long_factor": LONG},
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 32000}
    return config | changes


def test_phi3_longrope_picks_its_factors_by_the_engine_length():
    m = ModelConfig.from_hf(phi35_mini())
    assert (m.head_dim, m.rotary_dim, m.sliding_window) == (96, None, 262144)
    assert m.rope_scaling["rope_type"] == "longrope"
    short, long = m.rope_attrs(4096)["scaling"], m.rope_attrs(4097)["scaling"]
    assert (short["factors"], long["factors"]) == (SHORT, LONG)
    # HF's default: sqrt(1 + ln(131072 / 4096) / ln(4096)).
    assert short["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    freq = inv_freq(96, 10000.0, short)
    assert torch.equal(freq, 1.0 / (torch.tensor(SHORT) * 10000.0 ** (torch.arange(0, 96, 2).float() / 96)))
    assert ModelConfig.from_hf(phi35_mini(rope_scaling={"type": "su", "short_factor": SHORT,
                                                       "long_factor": LONG})).rope_scaling["rope_type"] == "longrope"


def test_partial_rotary_factor_from_either_transformers_version():
    v4 = phi35_mini(partial_rotary_factor=0.75, rope_scaling=None)
    params = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
    v5 = phi35_mini(rope_scaling=None, rope_parameters=params)
    for hf in (v4, v5):
        m = ModelConfig.from_hf(hf)
        assert (m.rotary_dim, m.rope_scaling) == (72, None)
        attrs = m.rope_attrs(4096)
        assert attrs["rotary_dim"] == 72
        freq = inv_freq(96, 10000.0, None, 72)
        assert freq.shape == (48,) and torch.equal(freq[36:], torch.zeros(12))
        assert torch.equal(freq[:36], inv_freq(72, 10000.0, None))


def test_rotary_permutation_pairs_the_rotated_dims_across_the_halves():
    perm = rotary_permutation(16, 12).tolist()
    # Pairs (i, i + 6) of the 12 rotated dims sit at (j, j + 8); dims 12..15 fill the rest.
    assert perm == [0, 1, 2, 3, 4, 5, 12, 13, 6, 7, 8, 9, 10, 11, 14, 15]
    assert sorted(perm) == list(range(16))


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"type": "longrope", "short_factor": SHORT[:10], "long_factor": LONG}},
     r"rope_scaling longrope needs short_factor: a list of 48 numbers \(one per rotated pair\)"),
    ({"rope_scaling": {"type": "longrope", "short_factor": SHORT, "long_factor": LONG},
      "original_max_position_embeddings": None},
     r"rope_scaling longrope needs original_max_position_embeddings"),
    ({"partial_rotary_factor": 0.01},
     r"model config: RoPE over 0 of 96 head dims; it needs an even count from 2 to head_dim"),
    ({"rope_scaling": {"type": "dynamic", "factor": 4.0}, "architectures": ["LlamaForCausalLM"]},
     r"rope_scaling type 'dynamic' is not supported; supported: default, linear, llama3, "
     r"longrope, yarn"),
])
def test_bad_rope_configs_are_refused(change, message):
    with pytest.raises(KilnError, match=message):
        ModelConfig.from_hf(phi35_mini(**change))


def test_sliding_window_layers_from_each_config_form():
    qwen2 = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 320,
             "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 2}
    m = ModelConfig.from_hf(qwen2)  # transformers 4: the layers from max_window_layers on
    assert (m.sliding_window, m.sliding_layers) == (32, [2, 3])
    assert [m.attention_window(i, 64) for i in range(4)] == [0, 0, 32, 32]
    assert [m.attention_window(i, 32) for i in range(4)] == [0, 0, 0, 0]  # hides nothing
    kinds = ["sliding_attention", "full_attention"] * 2  # transformers 5
    assert ModelConfig.from_hf(qwen2 | {"layer_types": kinds}).sliding_layers == [0, 2]
    none = ModelConfig.from_hf(qwen2 | {"layer_types": ["full_attention"] * 4})
    assert (none.sliding_window, none.sliding_layers) == (None, None)
    assert ModelConfig.from_hf(qwen2 | {"use_sliding_window": False}).sliding_window is None
    mistral = qwen2 | {"architectures": ["MistralForCausalLM"]}
    del mistral["use_sliding_window"], mistral["max_window_layers"]
    m = ModelConfig.from_hf(mistral)  # every layer
    assert (m.sliding_window, m.sliding_layers, m.attention_window(3, 4096)) == (32, None, 32)


def gemma3_v4(**changes) -> dict:
    """Gemma-3-1B's config.json as transformers 4 wrote it."""
    config = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
              "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
              "vocab_size": 262144, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
              "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
              "rope_theta": 1000000, "rope_local_base_freq": 10000, "rope_scaling": None,
              "sliding_window": 512, "sliding_window_pattern": 6,
              "final_logit_softcapping": None, "attn_logit_softcapping": None}
    return config | changes


def test_gemma3_sliding_layers_take_their_own_rope_base():
    m = ModelConfig.from_hf(gemma3_v4())
    assert (m.mlp_act, m.norm_offset, m.embed_scale, m.sandwich_norms, m.qk_norm) == (
        "gelu_tanh", True, True, True, True)
    assert m.attn_scale == 256 ** -0.5 and (m.attn_softcap, m.final_softcap) == (None, None)
    assert [i for i in range(26) if not m.sliding(i)] == [5, 11, 17, 23]
    assert m.rope_attrs(4096, 0)["theta"] == 10000.0 and m.rope_attrs(4096, 5)["theta"] == 1e6
    assert m.attention_window(0, 4096) == 512 and m.attention_window(5, 4096) == 0
    assert m.attention_window(0, 512) == 0  # a 512-token engine: the window hides nothing


def test_gemma_activation_and_encoder_refusals():
    gemma = {"architectures": ["GemmaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 320,
             "hidden_act": "gelu", "hidden_activation": None}
    assert ModelConfig.from_hf(gemma).mlp_act == "gelu_tanh"  # HF's Gemma: tanh GELU
    with pytest.raises(KilnError, match=r"config\.json: hidden_activation 'gelu' is not supported; "
                                        r"Kiln runs GemmaForCausalLM's MLP as act\(gate\) \* up"):
        ModelConfig.from_hf(gemma | {"hidden_activation": "gelu"})
    with pytest.raises(KilnError, match="use_bidirectional_attention is set"):
        ModelConfig.from_hf(gemma3_v4(use_bidirectional_attention=True))
    with pytest.raises(KilnError, match="rope_parameters.sliding_attention is 'linear'"):
        ModelConfig.from_hf(gemma3_v4(rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}))


def test_multimodal_checkpoint_builds_its_language_model():
    """gemma-3-4b-it's config.json: a text_config that keeps only what differs from
    Gemma3TextConfig's defaults, read with them filled in."""
    from kiln.builder.checkpoint.hf_files import language_model_config

    wrapper = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
               "eos_token_id": [1, 106], "text_config": {
                   "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                   "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                   "sliding_window": 1024},
               "vision_config": {"model_type": "siglip_vision_model"}}
    m = ModelConfig.from_hf(language_model_config(wrapper))
    assert (m.architecture, m.num_heads, m.num_kv_heads, m.head_dim, m.vocab_size) == (
        "Gemma3ForCausalLM", 8, 4, 256, 262208)
    assert m.eos_token_id == [1, 106] and m.tie_word_embeddings
    assert m.rope_scaling == {"rope_type": "linear", "factor": 8.0} and m.rope_theta == 1e6
    assert (m.local_rope_theta, m.sliding_window) == (10000.0, 1024)
    assert [i for i in range(34) if not m.sliding(i)] == [5, 11, 17, 23, 29]
    llava = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
             "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 320}}
    assert ModelConfig.from_hf(language_model_config(llava)).architecture == "LlamaForCausalLM"
    with pytest.raises(KilnError, match=r"LlavaForConditionalGeneration's text_config is a "
                                        r"'phi3' model; Kiln builds the language model of"):
        language_model_config(llava | {"text_config": {"model_type": "phi3"}})


def test_smollm3_layers_without_rope():
    smol = {"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 8, "num_attention_heads": 4, "vocab_size": 320}
    assert ModelConfig.from_hf(smol).nope_layers == [3, 7]  # every fourth without the list
    flags = [1, 0, 1, 1, 1, 1, 1, 0]
    assert ModelConfig.from_hf(smol | {"no_rope_layers": flags}).nope_layers == [1, 7]
    assert ModelConfig.from_hf(smol | {"no_rope_layers": [1] * 8}).nope_layers is None


def test_yarn_from_a_qwen_long_context_config():
    qwen = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "vocab_size": 152064, "max_position_embeddings": 131072, "rope_theta": 1e6,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    m = ModelConfig.from_hf(qwen)
    scaling = m.rope_attrs(131072)["scaling"]
    assert scaling["rope_type"] == "yarn"
    assert scaling["attention_factor"] == pytest.approx(0.1 * math.log(4.0) + 1.0)
    freq = inv_freq(128, 1e6, scaling)
    plain = inv_freq(128, 1e6, None)
    assert torch.equal(freq[:10], plain[:10])  # the fast pairs kept
    assert torch.allclose(freq[-10:], plain[-10:] / 4.0)  # the slow ones interpolated
    with pytest.raises(KilnError, match="rope_scaling yarn needs factor and "
                                        "original_max_position_embeddings"):
        ModelConfig.from_hf(qwen | {"rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_interleaved_rope_pairs_land_on_rotate_half_pairs():
    # GLM: pairs (0, 1), (2, 3), (4, 5) of 6 rotated dims of 8; dims 6, 7 unrotated.
    assert rotary_permutation(8, 6, interleaved=True).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert rotary_permutation(8, 8, interleaved=True).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert rotary_permutation(8, 4, interleaved=True).tolist() == [0, 2, 4, 5, 1, 3, 6, 7]


def test_command_r_plus_q_k_layernorms_are_refused():
    cohere = {"architectures": ["CohereForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 320,
              "layer_norm_eps": 1e-5, "logit_scale": 0.0625}
    m = ModelConfig.from_hf(cohere)
    assert (m.layer_norm, m.parallel_block, m.rope_interleaved, m.logit_scale, m.rms_norm_eps) == (
        True, True, True, 0.0625, 1e-5)
    with pytest.raises(KilnError, match="use_qk_norm is set"):
        ModelConfig.from_hf(cohere | {"use_qk_norm": True})


def qwen2_57b_a14b(**changes) -> dict:
    """The layout of Qwen2-57B-A14B's config.json (transformers 4 names)."""
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
              "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
              "moe_intermediate_size": 2560, "shared_expert_intermediate_size": 20480,
              "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False,
              "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151936,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
              "sliding_window": 65536, "use_sliding_window": False, "tie_word_embeddings": False}
    return config | changes


def test_mixture_of_experts_configs():
    m = ModelConfig.from_hf(qwen2_57b_a14b())
    assert (m.num_experts, m.experts_per_token, m.moe_intermediate_size) == (64, 8, 2560)
    assert (m.moe_layers, m.moe_renormalize, m.moe_round_weights) == (None, False, True)
    assert m.shared_expert_size == 20480 and m.attention_bias and not m.o_bias
    assert m.is_moe(0) and m.is_moe(27)
    # Qwen's dense layers: mlp_only_layers, and those off decoder_sparse_step's multiples.
    m = ModelConfig.from_hf(qwen2_57b_a14b(mlp_only_layers=[0, 5], decoder_sparse_step=2))
    assert m.moe_layers == [i for i in range(1, 28, 2) if i != 5] and not m.is_moe(0)
    # transformers 5 writes num_local_experts for every family; Mixtral renormalizes and
    # keeps its routing weights in float32 whatever norm_topk_prob says.
    mixtral = {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
               "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "vocab_size": 32000, "norm_topk_prob": False}
    m = ModelConfig.from_hf(mixtral)
    assert (m.num_experts, m.moe_intermediate_size, m.moe_renormalize, m.moe_round_weights) == (
        8, 14336, True, False)
    # 8 experts of 3 x 4096 x 14336 and a router each, 32 layers: Mixtral 8x7B's 46.7 B.
    assert m.num_params() == pytest.approx(46.7e9, rel=2e-3)
    # No experts: every MLP dense.
    assert ModelConfig.from_hf(qwen2_57b_a14b(num_experts=0)).num_experts is None
    with pytest.raises(KilnError, match=r"^model config: 9 experts a token of 8, each of "
                                        r"intermediate size 14336; each needs"):
        ModelConfig.from_hf(mixtral | {"num_experts_per_tok": 9})
    olmoe = {"architectures": ["OlmoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 1024,
             "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16,
             "num_attention_heads": 16, "vocab_size": 50304, "clip_qkv": 8.0}
    with pytest.raises(KilnError, match=r"^config.json: clip_qkv is set"):
        ModelConfig.from_hf(olmoe)


def test_mixture_of_experts_refuses_quantization(tmp_path):
    from kiln.builder.models import BuildConfig

    m = ModelConfig.from_hf(qwen2_57b_a14b())
    BuildConfig(dtype="bfloat16", max_seq_len=4096, kv_cache_dtype="fp8", targets=[90]).check_against(m)
    with pytest.raises(KilnError, match=r"^--quant fp8 is not supported for mixture-of-experts "
                                        r"models \(Qwen2MoeForCausalLM\); build without --quant"):
        BuildConfig(dtype="bfloat16", max_seq_len=4096, quant="fp8", targets=[90]).check_against(m)


def test_glm45_air_config():
    """GLM-4.5-Air's config.json: sigmoid routing with a correction bias, a plain shared expert
    of one expert's width, layer 0 dense, RoPE on half of each head, q/k norms off."""
    air = {"architectures": ["Glm4MoeForCausalLM"], "hidden_size": 4096,
           "intermediate_size": 10944, "moe_intermediate_size": 1408, "n_routed_experts": 128,
           "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 1,
           "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8,
           "head_dim": 128, "partial_rotary_factor": 0.5, "routed_scaling_factor": 1.0,
           "norm_topk_prob": True, "use_qk_norm": False, "attention_bias": True, "n_group": 1,
           "topk_group": 1, "vocab_size": 151552, "max_position_embeddings": 131072,
           "rope_theta": 1000000.0, "tie_word_embeddings": False}
    m = ModelConfig.from_hf(air)
    assert (m.num_experts, m.experts_per_token, m.moe_scoring, m.moe_renormalize) == (
        128, 8, "sigmoid", True)
    assert (m.shared_expert_size, m.shared_expert_gated, m.router_float32) == (1408, False, True)
    assert m.moe_layers == list(range(1, 46)) and m.moe_routed_scale is None
    assert (m.rotary_dim, m.qk_norm, m.attention_bias, m.o_bias) == (64, False, True, False)
    assert m.num_params() == pytest.approx(106.85e9, rel=1e-3)  # "106B total" (no MTP layer)
    glm46 = air | {"use_qk_norm": True, "routed_scaling_factor": 2.5}
    m = ModelConfig.from_hf(glm46)
    assert m.qk_norm and m.moe_routed_scale == 2.5
    with pytest.raises(KilnError, match=r"^config.json: the experts are routed within 4 of 8 "
                                        r"groups \(n_group, topk_group\), which Kiln does not build"):
        ModelConfig.from_hf(air | {"n_group": 8, "topk_group": 4})
    # Command R+'s use_qk_norm stays refused
    with pytest.raises(KilnError, match="use_qk_norm is set"):
        ModelConfig.from_hf({"architectures": ["CohereForCausalLM"], "use_qk_norm": True,
                             "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 4, "vocab_size": 32})


def test_ernie45_moe_config():
    """ERNIE-4.5-21B-A3B's config.json (its own key names): 6 of 64 experts, two experts' worth
    of shared expert, layers 1 to 27 routed, interleaved RoPE, the router's correction bias."""
    ernie = {"architectures": ["Ernie4_5_MoeForCausalLM"], "hidden_size": 2560,
             "intermediate_size": 12288, "moe_intermediate_size": 1536, "moe_num_experts": 64,
             "moe_k": 6, "moe_num_shared_experts": 2, "moe_layer_start_index": 1,
             "moe_layer_end_index": 27, "moe_layer_interval": 1, "num_hidden_layers": 28,
             "num_attention_heads": 20, "num_key_value_heads": 4, "head_dim": 128,
             "vocab_size": 103424, "tie_word_embeddings": True, "rope_theta": 500000.0,
             "max_position_embeddings": 131072, "use_bias": False}
    m = ModelConfig.from_hf(ernie)
    assert (m.num_experts, m.experts_per_token, m.shared_expert_size) == (64, 6, 3072)
    assert m.moe_layers == list(range(1, 28)) and m.moe_correction_bias and m.router_float32
    assert (m.moe_scoring, m.moe_renormalize, m.moe_round_weights) == ("softmax", True, True)
    assert m.rope_interleaved and not m.attention_bias
    assert m.num_params() == pytest.approx(21e9, rel=0.05)  # "21B total"
    m = ModelConfig.from_hf(ernie | {"moe_layer_end_index": 20, "moe_layer_interval": 2})
    assert m.moe_layers == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]


def test_phi35_moe_config():
    """Phi-3.5-MoE's config.json: 2 of 16 experts by sparsemixer (router_jitter_noise its eps),
    LayerNorms with biases, a biased LM head, LongRoPE whose attention factor is the set's own
    mscale."""
    moe = phi35_mini(architectures=["PhimoeForCausalLM"], hidden_size=4096, intermediate_size=6400,
                     num_local_experts=16, num_experts_per_tok=2, router_jitter_noise=0.01,
                     num_attention_heads=32, num_key_value_heads=8, attention_bias=True,
                     lm_head_bias=True,
                     rope_scaling={"type": "longrope", "short_factor": [1.0] * 64,
                                   "long_factor": [2.0] * 64, "short_mscale": 1.243,
                                   "long_mscale": 1.25})
    m = ModelConfig.from_hf(moe)
    assert (m.num_experts, m.experts_per_token, m.moe_scoring, m.sparsemixer_eps) == (
        16, 2, "sparsemixer", 0.01)
    assert m.layer_norm and m.norm_bias and m.lm_head_bias and m.attention_bias and m.o_bias
    assert m.rope_attrs(4096)["scaling"]["attention_factor"] == 1.243
    assert m.rope_attrs(8192)["scaling"]["attention_factor"] == 1.25
    with pytest.raises(KilnError, match=r"^config.json: num_experts_per_tok 4; sparsemixer "
                                        r"routing picks 2 experts a token"):
        ModelConfig.from_hf(moe | {"num_experts_per_tok": 4})
