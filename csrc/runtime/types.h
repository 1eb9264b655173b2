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

} // namespace kiln
