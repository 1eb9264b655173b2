"""Model and build configs: slotted dataclasses that validate themselves."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

from kiln.builder.errors import KilnError
from kiln.builder.ops.rope import SUPPORTED_ROPE_TYPES
from kiln.quantize.mode import check_group_size, check_targets, quant_mode


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """What an architecture adds to the Llama decoder, as data rather than name checks.

    A bias flag of None is read from the checkpoint's config (`attention_bias`, `mlp_bias`, or
    the family's own key: `bias_keys`, (q/k/v, o, MLP)).
    `rope_aliases`: older names of a rope_scaling type in this family's configs.
    Gemma's: `norm_offset` (every RMSNorm scales by 1 + weight), `embed_scale` (embeddings
    times sqrt(hidden_size)), `sandwich_norms` (RMSNorms on the attention's and the MLP's
    outputs too), `act_key` / `default_act` (the config key naming the MLP's activation and
    its value where the key is absent or null), `sliding_every` (without layer_types, layer i
    has the sliding window unless (i + 1) % sliding_every == 0; config.json's
    sliding_window_pattern overrides it). OLMo 2's: no `pre_norms` (only the norms on the
    outputs) and its q/k norms over each projection's full width (`qk_norm_full`)."""
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    mlp_bias: bool | None = None
    qk_norm: bool = False
    bias_keys: tuple[str, str, str] = ("attention_bias", "attention_bias", "mlp_bias")
    rope_aliases: tuple[tuple[str, str], ...] = ()
    norm_offset: bool = False
    embed_scale: bool = False
    sandwich_norms: bool = False
    act_key: str = "hidden_act"
    default_act: str = "silu"
    sliding_every: int | None = None
    pre_norms: bool = True       # RMSNorms on the attention's and the MLP's inputs (not OLMo 2)
    qk_norm_full: bool = False   # the q/k norms over the whole projection, not each head
    nope_every: int | None = None  # without no_rope_layers, every nope_every-th layer has no RoPE
    rope_interleaved: bool = False  # RoPE pairs dims (2i, 2i + 1) (GLM), not (i, i + d / 2)
    nope_full_layers: bool = False  # with sliding-window layers, the others take no RoPE (EXAONE 4)
    layer_norm: bool = False       # LayerNorm (mean and variance, no bias), not RMSNorm (Cohere)
    parallel_block: bool = False   # attention and MLP both read the input norm's output (Cohere)
    norm_bias: bool = False        # the LayerNorms have biases (StarCoder2)
    gated_mlp: bool = True         # act(gate) * up; else act(up) alone (StarCoder2's c_fc)
    # Mixture of experts (_moe_config): the config key of an expert's intermediate size; the
    # top-k probabilities renormalized (None: by norm_topk_prob); the routing weights rounded
    # to the activations' dtype (Qwen, OLMoE; not Mixtral); a shared expert beside the routed
    # ones, "gated" by sigmoid (Qwen2-MoE) or "plain" (GLM-4.5); the router's scoring
    # (ops.moe: "sigmoid" with the correction bias) and its GEMM in float32 (GLM-4.5).
    moe: bool = False
    moe_size_key: str = "moe_intermediate_size"
    moe_renormalize: bool | None = None
    moe_round_weights: bool = True
    shared_expert: str | None = None
    moe_scoring: str = "softmax"
    moe_correction_bias: bool = False  # the router's e_score_correction_bias (GLM-4.5, ERNIE 4.5)
    router_float32: bool = False
    qk_norm_key: str | None = None  # the config key that turns the q/k norms on (GLM-4.5)

    @property
    def absent_layer_parts(self) -> tuple[str, ...]:
        """The canonical layer tensors this family has not (names.required_names)."""
        norms = (("attn_norm", "mlp_norm") if not self.pre_norms else
                 ("mlp_norm",) if self.parallel_block else ())
        mlp = ("gate", "up", "down") if self.moe else () if self.gated_mlp else ("gate",)
        return norms + mlp
    # HF's post_attention_layernorm normalizes the attention's output (Gemma 2, 3, OLMo 2), not
    # the MLP's input
    post_attention_on_output: bool = False


_OLMO = dict(qk_norm=True, qk_norm_full=True, sandwich_norms=True, pre_norms=False,
             post_attention_on_output=True, mlp_bias=False)
_COHERE = dict(o_bias=False, mlp_bias=False, layer_norm=True, parallel_block=True,
               rope_interleaved=True)
_GEMMA = dict(qkv_bias=False, o_bias=False, mlp_bias=False, norm_offset=True, embed_scale=True,
              act_key="hidden_activation", default_act="gelu_pytorch_tanh")
# config.json's activation names -> the MLP's op (silu(gate) * up or gelu_tanh(gate) * up)
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_tanh": "gelu_tanh"}


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec(),
    "MistralForCausalLM": ArchSpec(qkv_bias=False, o_bias=False, mlp_bias=False),
    "Qwen2ForCausalLM": ArchSpec(qkv_bias=True, o_bias=False, mlp_bias=False),
    "Qwen3ForCausalLM": ArchSpec(mlp_bias=False, qk_norm=True),
    # Phi-3, Phi-3.5 and Phi-4 (mini): q/k/v and gate/up stored fused (names.py splits them).
    "Phi3ForCausalLM": ArchSpec(qkv_bias=False, o_bias=False, mlp_bias=False,
                                rope_aliases=(("su", "longrope"), ("yarn", "longrope"))),
    # Granite 3: Llama with scalar multipliers (embedding_multiplier, attention_multiplier,
    # residual_multiplier, logits_scaling), read from config.json wherever they are given.
    "GraniteForCausalLM": ArchSpec(),
    "Olmo2ForCausalLM": ArchSpec(**_OLMO),
    "Olmo3ForCausalLM": ArchSpec(**_OLMO),  # OLMo 2 with sliding-window layers (layer_types)
    # EXAONE 4: OLMo 2's output norms, per-head q/k norms, no RoPE on full-attention layers.
    "Exaone4ForCausalLM": ArchSpec(qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=True,
                                   sandwich_norms=True, pre_norms=False,
                                   post_attention_on_output=True, nope_full_layers=True),
    "MinistralForCausalLM": ArchSpec(qkv_bias=False, o_bias=False, mlp_bias=False),
    # StarCoder2: LayerNorms with biases, an MLP of c_fc, GELU-tanh and c_proj (not gated),
    # biases by use_bias.
    "Starcoder2ForCausalLM": ArchSpec(bias_keys=("use_bias",) * 3, layer_norm=True,
                                      norm_bias=True, gated_mlp=False),
    # Command R and R7B / A: LayerNorm, attention and MLP side by side on one norm's output,
    # interleaved RoPE (on the sliding-window layers only, Cohere 2), logits times logit_scale.
    "CohereForCausalLM": ArchSpec(**_COHERE),
    "Cohere2ForCausalLM": ArchSpec(**_COHERE, nope_full_layers=True),
    "HeliumForCausalLM": ArchSpec(o_bias=False, rope_interleaved=True),  # Kyutai's
    "SeedOssForCausalLM": ArchSpec(bias_keys=("attention_bias", "attention_out_bias", "mlp_bias")),
    # ERNIE 4.5 (dense): biases by use_bias, RoPE in interleaved pairs.
    "Ernie4_5ForCausalLM": ArchSpec(bias_keys=("use_bias",) * 3, rope_interleaved=True),
    # GLM-4 (0414): norms around attention and MLP (post_self_attn_layernorm, post_mlp_layernorm),
    # gate/up stored fused, RoPE on half of each head in interleaved pairs.
    "Glm4ForCausalLM": ArchSpec(o_bias=False, mlp_bias=False, sandwich_norms=True,
                                rope_interleaved=True),
    # SmolLM3: Llama with no RoPE on some layers (no_rope_layers: 0 where a layer has none).
    "SmolLM3ForCausalLM": ArchSpec(nope_every=4),
    # Mixtures of experts: each layer's MLP is top-k routed experts (ModelConfig.moe_layers).
    "MixtralForCausalLM": ArchSpec(qkv_bias=False, o_bias=False, mlp_bias=False, moe=True,
                                   moe_size_key="intermediate_size", moe_renormalize=True,
                                   moe_round_weights=False),
    "Qwen2MoeForCausalLM": ArchSpec(qkv_bias=True, o_bias=False, mlp_bias=False, moe=True,
                                    shared_expert="gated"),
    "Qwen3MoeForCausalLM": ArchSpec(mlp_bias=False, qk_norm=True, moe=True),
    "OlmoeForCausalLM": ArchSpec(mlp_bias=False, qk_norm=True, qk_norm_full=True, moe=True,
                                 moe_size_key="intermediate_size"),
    # Granite 3 MoE: Granite's multipliers; each layer's experts stored stacked (names.py);
    # softmax over the top-k logits, which is the top-k probabilities renormalized.
    "GraniteMoeForCausalLM": ArchSpec(mlp_bias=False, moe=True,
                                      moe_size_key="intermediate_size", moe_renormalize=True),
    # GLM-4.5 / 4.6: sigmoid routing picked with a correction bias, scaled weights, a plain
    # shared expert, the first layers dense, RoPE on part of each head, optional q/k norms.
    "Glm4MoeForCausalLM": ArchSpec(o_bias=False, mlp_bias=False, moe=True, moe_round_weights=False,
                                   shared_expert="plain", moe_scoring="sigmoid",
                                   moe_correction_bias=True, router_float32=True,
                                   qk_norm_key="use_qk_norm"),
    # ERNIE 4.5 MoE: softmax scores picked with the correction bias, renormalized, the router
    # in float32, plain shared experts, MoE layers from moe_layer_start_index to
    # moe_layer_end_index every moe_layer_interval-th; interleaved RoPE as the dense ERNIE's.
    "Ernie4_5_MoeForCausalLM": ArchSpec(bias_keys=("use_bias",) * 3, rope_interleaved=True,
                                        moe=True, moe_renormalize=True, shared_expert="plain",
                                        moe_correction_bias=True, router_float32=True),
    # Phi-3.5-MoE: LayerNorms with biases, 2 of 16 experts by sparsemixer, an LM head with a
    # bias (lm_head_bias), LongRoPE scaled by its short_mscale / long_mscale.
    "PhimoeForCausalLM": ArchSpec(mlp_bias=False, layer_norm=True, norm_bias=True, moe=True,
                                  moe_size_key="intermediate_size", moe_scoring="sparsemixer"),
    "GemmaForCausalLM": ArchSpec(**_GEMMA),
    "Gemma2ForCausalLM": ArchSpec(**_GEMMA, sandwich_norms=True, post_attention_on_output=True,
                                  sliding_every=2),
    "Gemma3ForCausalLM": ArchSpec(**_GEMMA, sandwich_norms=True, post_attention_on_output=True,
                                  qk_norm=True, sliding_every=6),
}


def _flag(spec_value: bool | None, hf: dict, key: str) -> bool:
    return bool(hf.get(key, False)) if spec_value is None else spec_value


def _local_rope_theta(hf: dict) -> float | None:
    """The sliding-window layers' own RoPE base (Gemma 3): rope_local_base_freq, or
    rope_parameters' sliding_attention entry (transformers 5), which must be unscaled."""
    local = (hf.get("rope_parameters") or {}).get("sliding_attention")
    if local:
        if local.get("rope_type", "default") != "default":
            raise KilnError(f"rope_parameters.sliding_attention is {local.get('rope_type')!r}; "
                            "Kiln reads unscaled RoPE on sliding-window layers only")
        return float(local["rope_theta"])
    return float(hf["rope_local_base_freq"]) if hf.get("rope_local_base_freq") else None


def _rope_params(hf: dict, spec: ArchSpec) -> tuple[float, dict | None, float]:
    """(theta, scaling, partial_rotary_factor) from either transformers 4 (rope_theta,
    rope_scaling, partial_rotary_factor) or 5 (rope_parameters, per layer type where a model
    has its full-attention layers' under full_attention)."""
    params = dict(hf.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):
        params = dict(params["full_attention"])
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    fraction = params.pop("partial_rotary_factor", None) or hf.get("partial_rotary_factor") or 1.0
    scaling = hf.get("rope_scaling") or (params or None)
    if scaling:
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
        kind = scaling.pop("type", None)
        kind = scaling.setdefault("rope_type", kind or "default")
        scaling["rope_type"] = dict(spec.rope_aliases).get(kind, kind)
        if scaling["rope_type"] == "default":
            scaling = None
        elif scaling["rope_type"] in ("longrope", "yarn"):
            scaling.setdefault("original_max_position_embeddings",
                               hf.get("original_max_position_embeddings"))
    return theta, scaling, float(fraction)


def _sliding_layers(hf: dict, layers: int, spec: ArchSpec) -> list[int] | None:
    """The layers a sliding window applies to: config.json's layer_types (transformers 5),
    else the family's pattern (Gemma), else Qwen2's rule (layers from max_window_layers on),
    else all (None)."""
    if hf.get("layer_types"):
        return [i for i, kind in enumerate(hf["layer_types"]) if kind == "sliding_attention"]
    if spec.sliding_every:
        every = int(hf.get("sliding_window_pattern") or spec.sliding_every)
        return [i for i in range(layers) if (i + 1) % every]
    if "max_window_layers" in hf:
        return list(range(int(hf["max_window_layers"]), layers))
    return None


def _nope_layers(hf: dict, layers: int, spec: ArchSpec, sliding: list[int] | None) -> list[int] | None:
    """The layers without RoPE: no_rope_layers' zeros, else every nope_every-th (SmolLM3); or,
    where the model has a sliding window (`sliding`: its layers, None: all), the layers
    without it (EXAONE 4)."""
    if spec.nope_full_layers:
        if not hf.get("sliding_window") or sliding is None:
            return None
        return [i for i in range(layers) if i not in sliding] or None
    if not spec.nope_every:
        return None
    flags = hf.get("no_rope_layers") or [int((i + 1) % spec.nope_every != 0) for i in range(layers)]
    return [i for i, rope in enumerate(flags) if not rope] or None


def _moe_config(hf: dict, spec: ArchSpec, layers: int) -> dict:
    """ModelConfig's mixture-of-experts fields from config.json. Qwen's MoE layers: those
    not in mlp_only_layers whose (index + 1) is a multiple of decoder_sparse_step; the others'
    MLPs are dense, of intermediate_size."""
    if hf.get("clip_qkv") is not None:
        raise KilnError("config.json: clip_qkv is set (q, k and v clamped), which Kiln does not "
                        "build")
    # num_experts (Qwen, OLMoE), num_local_experts (Mixtral; transformers 5 writes it for most),
    # n_routed_experts (GLM-4.5), moe_num_experts (ERNIE 4.5)
    experts = int(hf.get("num_local_experts") or hf.get("num_experts")
                  or hf.get("n_routed_experts") or hf.get("moe_num_experts") or 0)
    if not experts:
        return {}  # no experts: every layer's MLP is dense
    if spec.moe_scoring == "sparsemixer" and int(hf.get("num_experts_per_tok") or 2) != 2:
        raise KilnError(f"config.json: num_experts_per_tok {hf['num_experts_per_tok']}; "
                        "sparsemixer routing picks 2 experts a token")
    groups, chosen = int(hf.get("n_group") or 1), int(hf.get("topk_group") or 1)
    if chosen < groups:
        raise KilnError(f"config.json: the experts are routed within {chosen} of {groups} groups "
                        "(n_group, topk_group), which Kiln does not build")
    # Dense layers: Qwen's mlp_only_layers and those off decoder_sparse_step's multiples;
    # GLM-4.5's first first_k_dense_replace; ERNIE 4.5's outside moe_layer_start_index ..
    # moe_layer_end_index or off moe_layer_interval's multiples.
    step = int(hf.get("decoder_sparse_step") or hf.get("moe_layer_interval") or 1)
    first = int(hf.get("first_k_dense_replace") or hf.get("moe_layer_start_index") or 0)
    last = int(hf["moe_layer_end_index"]) if hf.get("moe_layer_end_index") is not None else layers - 1
    dense = set(hf.get("mlp_only_layers") or ())
    moe = [i for i in range(first, last + 1) if i not in dense and (i + 1) % step == 0]
    renormalize = (bool(hf.get("norm_topk_prob", False)) if spec.moe_renormalize is None
                   else spec.moe_renormalize)
    size = int(hf[spec.moe_size_key])
    shared = 0
    if spec.shared_expert == "gated":
        shared = int(hf["shared_expert_intermediate_size"])
    elif spec.shared_expert == "plain":  # n experts' worth
        shared = size * int(hf.get("n_shared_experts") or hf.get("moe_num_shared_experts") or 0)
    return dict(num_experts=experts,
                experts_per_token=int(hf.get("num_experts_per_tok") or hf["moe_k"]),
                moe_intermediate_size=size,
                moe_layers=None if len(moe) == layers else moe,
                moe_renormalize=renormalize, moe_round_weights=spec.moe_round_weights,
                shared_expert_size=shared, shared_expert_gated=spec.shared_expert == "gated",
                moe_scoring=spec.moe_scoring, moe_correction_bias=spec.moe_correction_bias,
                moe_routed_scale=_multiplier(hf.get("routed_scaling_factor")),
                router_float32=spec.router_float32,
                sparsemixer_eps=(float(hf.get("router_jitter_noise") or 0.0)
                                 if spec.moe_scoring == "sparsemixer" else 0.0))


def _positive(value) -> float | None:
    return float(value) if value else None


def _multiplier(value) -> float | None:
    """A scalar multiplier, None where it is absent or 1 (nothing to do)."""
    return float(value) if value is not None and float(value) != 1.0 else None


def _check_longrope(scaling: dict, rotary_dim: int) -> None:
    for key in ("short_factor", "long_factor"):
        factors = scaling.get(key)
        if not isinstance(factors, list) or len(factors) != rotary_dim // 2:
            raise KilnError(f"rope_scaling longrope needs {key}: a list of {rotary_dim // 2} "
                            f"numbers (one per rotated pair), got {factors!r}")
    if not isinstance(scaling.get("original_max_position_embeddings"), int):
        raise KilnError("rope_scaling longrope needs original_max_position_embeddings (the "
                        "pretrained context) in config.json")


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q, k, v projections
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    rotary_dim: int | None = None  # dims of a head RoPE rotates, where fewer than head_dim
    # The layers whose attention is limited to sliding_window (None: all of them, when set).
    sliding_layers: list[int] | None = None
    mlp_act: str = "silu"             # the MLP's act(gate) * up: "silu" or "gelu_tanh"
    norm_offset: bool = False         # RMSNorms scale by 1 + weight (Gemma)
    embed_scale: bool = False         # embeddings times sqrt(hidden_size) (Gemma)
    sandwich_norms: bool = False      # RMSNorms on the attention's and MLP's outputs (Gemma 2, 3)
    attn_scale: float | None = None   # query_pre_attn_scalar ** -0.5 where given, else hd ** -0.5
    attn_softcap: float | None = None   # attention scores capped by C * tanh(s / C) (Gemma 2)
    final_softcap: float | None = None  # the logits likewise
    local_rope_theta: float | None = None  # the sliding-window layers' RoPE base (Gemma 3)
    embed_multiplier: float | None = None     # embeddings times this (Granite)
    residual_multiplier: float | None = None  # attention and MLP outputs times this (Granite)
    logits_scaling: float | None = None       # logits divided by this (Granite)
    pre_norms: bool = True        # RMSNorms on the attention's and MLP's inputs (not OLMo 2)
    qk_norm_full: bool = False    # q/k norms over the whole projection (OLMo 2), not per head
    nope_layers: list[int] | None = None  # layers whose q and k take no RoPE (SmolLM3)
    rope_interleaved: bool = False  # RoPE pairs (2i, 2i + 1) in HF's head layout (GLM)
    layer_norm: bool = False        # the norms are LayerNorms (Cohere), not RMSNorms
    parallel_block: bool = False    # attention and MLP side by side on the input norm (Cohere)
    logit_scale: float | None = None  # logits times this (Cohere)
    norm_bias: bool = False         # the LayerNorms have biases (StarCoder2)
    gated_mlp: bool = True          # the MLP is act(gate) * up; else act(up) (StarCoder2)
    # Mixture of experts (None: a dense model): the layers whose MLP routes each token to
    # experts_per_token of num_experts experts of moe_intermediate_size (moe_layers None: all),
    # the other layers' MLPs being dense; ops.moe says what the flags mean.
    num_experts: int | None = None
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_layers: list[int] | None = None
    moe_renormalize: bool = True
    moe_round_weights: bool = True
    shared_expert_size: int = 0  # the shared expert's intermediate size, 0: none
    shared_expert_gated: bool = False  # its output times sigmoid(its gate's logit) (Qwen2-MoE)
    moe_scoring: str = "softmax"       # or "sigmoid" (GLM-4.5)
    moe_correction_bias: bool = False  # experts picked by score + the router's correction bias
    moe_routed_scale: float | None = None  # the routing weights times this (GLM-4.5)
    router_float32: bool = False       # the router's GEMM in float32 (GLM-4.5)
    sparsemixer_eps: float = 0.0       # sparsemixer's jitter eps (router_jitter_noise)
    lm_head_bias: bool = False         # the LM head has a bias (Phi-3.5-MoE)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise KilnError(f"architecture {self.architecture!r} is not supported; "
                            f"supported: {', '.join(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise KilnError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise KilnError(f"model config: num_attention_heads {self.num_heads} is not a multiple "
                            f"of num_key_value_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise KilnError(f"model config: head_dim {self.head_dim} must be even for RoPE")
        rotary = self.head_dim if self.rotary_dim is None else self.rotary_dim
        if rotary % 2 or not 0 < rotary <= self.head_dim:
            raise KilnError(f"model config: RoPE over {rotary} of {self.head_dim} head dims; it "
                            "needs an even count from 2 to head_dim (partial_rotary_factor)")
        if self.num_experts is not None and not (
                1 <= self.experts_per_token <= self.num_experts and self.moe_intermediate_size > 0):
            raise KilnError(f"model config: {self.experts_per_token} experts a token of "
                            f"{self.num_experts}, each of intermediate size "
                            f"{self.moe_intermediate_size}; each needs to be positive and no more "
                            "experts a token than there are")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in SUPPORTED_ROPE_TYPES:
            raise KilnError(f"rope_scaling type {kind!r} is not supported; supported: "
                            f"{', '.join(SUPPORTED_ROPE_TYPES)}")
        if kind == "longrope":
            _check_longrope(self.rope_scaling, rotary)
        if kind == "yarn" and not (isinstance(self.rope_scaling.get("original_max_position_embeddings"), int)
                                   and self.rope_scaling.get("factor")):
            raise KilnError("rope_scaling yarn needs factor and original_max_position_embeddings "
                            f"(the pretrained context), got {self.rope_scaling}")

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        archs = hf.get("architectures") or []
        if len(archs) != 1:
            raise KilnError(f"config.json lists architectures {archs}; expected exactly one of "
                            f"{', '.join(ARCHITECTURES)}")
        arch = archs[0]
        if arch not in ARCHITECTURES:
            raise KilnError(f"architecture {arch!r} is not supported; supported: "
                            f"{', '.join(ARCHITECTURES)}")
        spec = ARCHITECTURES[arch]
        act = hf.get(spec.act_key) or spec.default_act
        if act not in ACTIVATIONS:
            raise KilnError(f"config.json: {spec.act_key} {act!r} is not supported; Kiln runs "
                            f"{arch}'s MLP as act(gate) * up with {spec.act_key} "
                            f"{' or '.join(repr(a) for a in ACTIVATIONS)}")
        if hf.get("use_qk_norm") and not spec.qk_norm_key:
            raise KilnError("config.json: use_qk_norm is set (Command R+'s per-head LayerNorms "
                            "on q and k), which Kiln does not build")
        if hf.get("use_bidirectional_attention"):
            raise KilnError("config.json: use_bidirectional_attention is set (an encoder); "
                            "Kiln builds causal decoders only")
        try:
            heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            head_dim = int(hf.get("head_dim") or hidden // heads)
            theta, scaling, fraction = _rope_params(hf, spec)
            window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
            layers = int(hf["num_hidden_layers"])
            sliding = _sliding_layers(hf, layers, spec) if window else None
            nope = _nope_layers(hf, layers, spec, sliding)
            window = window if sliding != [] else None
            return cls(
                architecture=arch,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=head_dim,
                rms_norm_eps=float(hf.get("rms_norm_eps") or hf.get("layer_norm_eps")
                                   or hf.get("norm_epsilon") or 1e-6),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=_flag(spec.qkv_bias, hf, spec.bias_keys[0]),
                o_bias=_flag(spec.o_bias, hf, spec.bias_keys[1]),
                mlp_bias=_flag(spec.mlp_bias, hf, spec.bias_keys[2]),
                qk_norm=spec.qk_norm or bool(spec.qk_norm_key and hf.get(spec.qk_norm_key)),
                sliding_window=int(window) if window else None,
                sliding_layers=sliding or None,
                mlp_act=ACTIVATIONS[act],
                norm_offset=spec.norm_offset,
                embed_scale=spec.embed_scale,
                sandwich_norms=spec.sandwich_norms,
                attn_scale=(float(hf["query_pre_attn_scalar"]) ** -0.5
                            if hf.get("query_pre_attn_scalar")
                            else _positive(hf.get("attention_multiplier"))),
                attn_softcap=_positive(hf.get("attn_logit_softcapping")),
                final_softcap=_positive(hf.get("final_logit_softcapping")),
                local_rope_theta=_local_rope_theta(hf) if window else None,
                embed_multiplier=_multiplier(hf.get("embedding_multiplier")),
                residual_multiplier=_multiplier(hf.get("residual_multiplier")),
                logits_scaling=_multiplier(hf.get("logits_scaling")),
                pre_norms=spec.pre_norms,
                qk_norm_full=spec.qk_norm_full,
                nope_layers=nope,
                rope_interleaved=spec.rope_interleaved,
                layer_norm=spec.layer_norm,
                parallel_block=spec.parallel_block,
                logit_scale=_multiplier(hf.get("logit_scale")),
                norm_bias=spec.norm_bias,
                gated_mlp=spec.gated_mlp,
                lm_head_bias=bool(hf.get("lm_head_bias", False)),
                **(_moe_config(hf, spec, layers) if spec.moe else {}),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                rotary_dim=int(head_dim * fraction) if int(head_dim * fraction) != head_dim else None,
            )
        except KeyError as missing:
            raise KilnError(f"config.json has no {missing.args[0]!r}; is this a {arch} "
                            "checkpoint saved by transformers?") from None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        return cls(**data)

    def is_moe(self, layer: int) -> bool:
        """Whether a layer's MLP is the routed experts."""
        return self.num_experts is not None and (self.moe_layers is None or layer in self.moe_layers)

    def sliding(self, layer: int) -> bool:
        """Whether a layer is one of the sliding-window layers (whatever the engine's length)."""
        return bool(self.sliding_window) and (self.sliding_layers is None
                                              or layer in self.sliding_layers)

    def rope_attrs(self, max_seq_len: int, layer: int = 0) -> dict:
        """The rope ops' attrs for an engine of max_seq_len positions. LongRoPE's factors are
        fixed per engine, as vLLM fixes them: the long set where the engine's sequences may run
        past the pretrained context (HF switches a whole forward to it once any position does,
        leaving earlier keys rotated by the short set), else the short set, where the engine
        computes exactly what HF does."""
        if self.local_rope_theta and self.sliding(layer):
            return {"head_dim": self.head_dim, "theta": self.local_rope_theta, "scaling": None}
        scaling = self.rope_scaling
        if (scaling or {}).get("rope_type") == "longrope":
            original = scaling["original_max_position_embeddings"]
            factors = scaling["long_factor" if max_seq_len > original else "short_factor"]
            # Phi-3.5-MoE gives each factor set its own attention factor (mscale)
            mscale = scaling.get("long_mscale" if max_seq_len > original else "short_mscale")
            scaling = {"rope_type": "longrope", "factors": list(factors),
                       "attention_factor": mscale or self.longrope_attention_factor()}
        elif (scaling or {}).get("rope_type") == "yarn":
            scaling = dict(scaling, attention_factor=self.yarn_attention_factor())
        attrs = {"head_dim": self.head_dim, "theta": self.rope_theta, "scaling": scaling}
        if self.rotary_dim:
            attrs["rotary_dim"] = self.rotary_dim
        return attrs

    def attention_window(self, layer: int, max_seq_len: int) -> int:
        """A layer's sliding window where it hides keys from an engine of max_seq_len
        positions, else 0."""
        window = self.sliding_window
        return window if self.sliding(layer) and max_seq_len > window else 0

    def yarn_attention_factor(self) -> float:
        """The factor YaRN multiplies cos and sin by: config.json's attention_factor, else
        0.1 * ln(factor) + 1 (DeepSeek's mscale / mscale_all_dim ratio where both are given)."""
        s = self.rope_scaling
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if s.get("mscale") and s.get("mscale_all_dim"):
            return mscale(s["factor"], s["mscale"]) / mscale(s["factor"], s["mscale_all_dim"])
        return mscale(s["factor"])

    def longrope_attention_factor(self) -> float:
        """The factor LongRoPE multiplies cos and sin by (q and k each): HF's default from the
        context's stretch unless config.json gives one."""
        s = self.rope_scaling
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])
        original = s["original_max_position_embeddings"]
        factor = s.get("factor") or self.max_position_embeddings / original
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))

    def num_params(self) -> int:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        norms = ((h if self.parallel_block else 2 * h) if self.pre_norms else 0) + (
            2 * h if self.sandwich_norms else 0)
        if self.qk_norm:
            norms += (self.num_heads + self.num_kv_heads) * hd if self.qk_norm_full else 2 * hd
        per_layer = attn + norms
        mlps = 0
        for layer in range(self.num_layers):
            if self.is_moe(layer):
                shared = 3 * h * self.shared_expert_size + (h if self.shared_expert_gated else 0)
                bias = self.num_experts if self.moe_correction_bias else 0
                mlps += self.num_experts * (3 * h * self.moe_intermediate_size + h) + shared + bias
            else:
                mlps += (3 if self.gated_mlp else 2) * h * i
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * per_layer + mlps + h + head


BUILD_DTYPES = ("float32", "float16", "bfloat16")


def kv_dtype_of(kv_cache_dtype: str, dtype: str) -> str:
    """The IR dtype a KV cache holds: --kv-cache-dtype fp8 or int8, else ("auto") the build's."""
    return {"fp8": "float8_e4m3fn", "int8": "int8"}.get(kv_cache_dtype, dtype)


@dataclass(slots=True)
class BuildConfig:
    dtype: str = "float16"
    max_batch_size: int = 64
    max_seq_len: int = 2048
    max_num_tokens: int = 4096
    tokens_per_block: int = 32
    tp_size: int = 1
    targets: list[int] = field(default_factory=lambda: [80, 89, 90])
    quant: str = "none"                # kiln.quantize.mode: QUANT_NAMES
    kv_cache_dtype: str = "auto"       # "auto" (= dtype), "fp8" or "int8"
    quant_mode: int | None = None      # QuantMode flags of the two above, for the C++ runtime
    # int4: input channels per weight scale (32, 64 or 128); None: 128, or the largest of 64 and
    # 32 that divides a GEMM's K. Each linear_wo node's group_size attr is what it got.
    quant_group_size: int | None = None
    # Where quantization scales come from (kiln.quantize.calibrate): used by the quantize_*
    # passes, never serialized, like TensorRT's IBuilderConfig.int8_calibrator.
    calibrator: object = field(default=None, repr=False, compare=False,
                               metadata={"serialize": False})

    def __post_init__(self) -> None:
        if self.dtype not in BUILD_DTYPES:
            raise KilnError(f"--dtype {self.dtype} is not supported; use one of {', '.join(BUILD_DTYPES)}")
        for name in ("max_batch_size", "max_seq_len", "max_num_tokens", "tokens_per_block"):
            if getattr(self, name) < 1:
                raise KilnError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.tokens_per_block & (self.tokens_per_block - 1):
            raise KilnError(f"--tokens-per-block must be a power of two, got {self.tokens_per_block}")
        if self.tp_size != 1:
            raise KilnError("tensor parallelism is not supported yet: use tp_size 1")
        for sm in self.targets:
            if sm not in (75, 80, 86, 87, 89, 90, 100, 120):
                raise KilnError(f"--target-sm {sm} is not a known NVIDIA architecture; use e.g. 80, 89 or 90")
        old = sorted(sm for sm in self.targets if sm < 80)
        if self.dtype == "bfloat16" and old:
            raise KilnError(f"--dtype bfloat16 needs SM 80 or newer, but --target-sm includes "
                            f"{old[0]}; use --dtype float16 for it, or drop it")
        mode = quant_mode(self.quant, self.kv_cache_dtype)
        if self.quant_mode is not None and self.quant_mode != int(mode):
            raise KilnError(f"build.quant_mode {self.quant_mode} does not match --quant {self.quant} "
                            f"--kv-cache-dtype {self.kv_cache_dtype} ({int(mode)}); rebuild the engine")
        self.quant_mode = int(mode)
        check_group_size(self.quant, self.quant_group_size)
        check_targets(mode, self.quant, self.kv_cache_dtype, self.targets)

    def check_against(self, model: ModelConfig) -> None:
        if model.num_experts is not None and self.quant != "none":
            raise KilnError(f"--quant {self.quant} is not supported for mixture-of-experts models "
                            f"({model.architecture}); build without --quant (the KV cache may "
                            "still be quantized with --kv-cache-dtype)")
        if self.max_seq_len > model.max_position_embeddings:
            raise KilnError(f"--max-seq-len {self.max_seq_len} exceeds what the model supports "
                            f"({model.max_position_embeddings} positions); use --max-seq-len "
                            f"{model.max_position_embeddings} or less")

    def limit(self, name: str, asked: int | None) -> int:
        """A runtime limit (max_batch_size, max_num_tokens) asked of an engine of this build:
        the build's own when None, refused outside 1..the build's."""
        built = getattr(self, name)
        if asked is None:
            return built
        if not 1 <= asked <= built:
            raise KilnError(f"{name}={asked} is outside what the engine was built for (1..{built}); "
                            f"rebuild with a larger --{name.replace('_', '-')}")
        return asked

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_seq_len // self.tokens_per_block)

    @property
    def kv_dtype(self) -> str:
        """The IR dtype the KV cache holds."""
        return kv_dtype_of(self.kv_cache_dtype, self.dtype)

    def to_json(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("serialize", True)}

    @classmethod
    def from_json(cls, data: dict) -> "BuildConfig":
        return cls(**data)
