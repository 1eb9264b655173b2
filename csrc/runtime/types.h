#pragma once

#include <cstdint>

namespace kiln
{

/// @brief A token id in the model's vocabulary.
using TokenIdType = std::int32_t;
/// @brief Counts and lengths: tokens, blocks, sequences.
using SizeType = std::int32_t;
/// @brief A physical KV-cache block index.
using BlockIdType = std::int32_t;
/// @brief The id the executor gives a request (never 0).
using IdType = std::uint64_t;

/// @brief A token and its log-probability.
struct TokenLogProb
{
    TokenIdType token = 0;
    float logProb = 0.0F;
};

} // namespace kiln
