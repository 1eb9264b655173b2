// Generated from quantize/quant_mode.json by `python -m kiln.quantize.header`;
// edit the JSON and regenerate, never this file.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln
{

/// @brief Flags of what an engine's weights, activations and KV cache hold;
/// config.json records them as build.quant_mode.
struct QuantMode
{
    /// @brief Weights are 4-bit integers (packed two to a byte).
    static constexpr std::uint32_t kInt4Weights = 1u << 0;
    /// @brief Weights are 8-bit integers.
    static constexpr std::uint32_t kInt8Weights = 1u << 1;
    /// @brief GEMM inputs are quantized to int8 (W8A8).
    static constexpr std::uint32_t kInt8Activations = 1u << 2;
    /// @brief One weight scale per output channel.
    static constexpr std::uint32_t kPerChannel = 1u << 3;
    /// @brief One activation scale per token, computed at run time.
    static constexpr std::uint32_t kPerToken = 1u << 4;
    /// @brief One weight scale per group of input channels.
    static constexpr std::uint32_t kPerGroup = 1u << 5;
    /// @brief FP8 e4m3 weights and activations with per-tensor scales.
    static constexpr std::uint32_t kFp8Qdq = 1u << 6;
    /// @brief The KV cache holds int8 with per-layer scales.
    static constexpr std::uint32_t kInt8KvCache = 1u << 7;
    /// @brief The KV cache holds FP8 e4m3 with per-layer scales.
    static constexpr std::uint32_t kFp8KvCache = 1u << 8;
};

/// @brief The flags of a named mode (`--quant`); false when the name is unknown.
[[nodiscard]] constexpr bool quantModeOf(std::string_view name, std::uint32_t& flags)
{
    if (name == "none")
    {
        flags = 0u;
        return true;
    }
    if (name == "fp8")
    {
        flags = QuantMode::kFp8Qdq;
        return true;
    }
    if (name == "int8_sq")
    {
        flags = QuantMode::kInt8Weights | QuantMode::kInt8Activations | QuantMode::kPerChannel | QuantMode::kPerToken;
        return true;
    }
    if (name == "int8_wo")
    {
        flags = QuantMode::kInt8Weights | QuantMode::kPerChannel;
        return true;
    }
    if (name == "int4_awq")
    {
        flags = QuantMode::kInt4Weights | QuantMode::kPerGroup;
        return true;
    }
    if (name == "int4_gptq")
    {
        flags = QuantMode::kInt4Weights | QuantMode::kPerGroup;
        return true;
    }
    return false;
}

/// @brief The flags of a KV cache option (`--kv-cache-dtype`); false when unknown.
[[nodiscard]] constexpr bool kvCacheModeOf(std::string_view name, std::uint32_t& flags)
{
    if (name == "auto")
    {
        flags = 0u;
        return true;
    }
    if (name == "fp8")
    {
        flags = QuantMode::kFp8KvCache;
        return true;
    }
    if (name == "int8")
    {
        flags = QuantMode::kInt8KvCache;
        return true;
    }
    return false;
}

/// @brief Whether a combination of flags is one Kiln can build and run.
[[nodiscard]] constexpr bool isValidQuantMode(std::uint32_t flags)
{
    if (((flags & QuantMode::kInt4Weights) != 0) + ((flags & QuantMode::kInt8Weights) != 0) + ((flags & QuantMode::kFp8Qdq) != 0) > 1)
        return false;
    if (((flags & QuantMode::kPerChannel) != 0) + ((flags & QuantMode::kPerGroup) != 0) > 1)
        return false;
    if (((flags & QuantMode::kInt8KvCache) != 0) + ((flags & QuantMode::kFp8KvCache) != 0) > 1)
        return false;
    if ((flags & QuantMode::kInt4Weights) && (flags & (QuantMode::kPerGroup)) != (QuantMode::kPerGroup))
        return false;
    if ((flags & QuantMode::kInt8Weights) && (flags & (QuantMode::kPerChannel)) != (QuantMode::kPerChannel))
        return false;
    if ((flags & QuantMode::kInt8Activations) && (flags & (QuantMode::kInt8Weights | QuantMode::kPerToken)) != (QuantMode::kInt8Weights | QuantMode::kPerToken))
        return false;
    if ((flags & QuantMode::kPerToken) && (flags & (QuantMode::kInt8Activations)) != (QuantMode::kInt8Activations))
        return false;
    if ((flags & QuantMode::kPerChannel) && (flags & (QuantMode::kInt8Weights)) != (QuantMode::kInt8Weights))
        return false;
    if ((flags & QuantMode::kPerGroup) && (flags & (QuantMode::kInt4Weights)) != (QuantMode::kInt4Weights))
        return false;
    return true;
}

/// @brief The oldest SM architecture whose kernels can run `flags` (0: any).
[[nodiscard]] constexpr int minSmOf(std::uint32_t flags)
{
    int sm = 0;
    if ((flags & QuantMode::kFp8Qdq) && sm < 89)
        sm = 89;
    if ((flags & QuantMode::kFp8KvCache) && sm < 89)
        sm = 89;
    return sm;
}

} // namespace kiln
