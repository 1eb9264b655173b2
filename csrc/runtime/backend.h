#pragma once

#include "runtime/step_inputs.h"
#include "runtime/types.h"

#include <vector>

namespace kiln
{

/// @brief Runs the model for one step. Owns the KV cache memory; the executor owns its layout.
///
/// The executor calls forward from its own thread, one step at a time.
class Backend
{
public:
    Backend() = default;
    virtual ~Backend() = default;
    Backend(Backend const&) = delete;
    Backend& operator=(Backend const&) = delete;
    Backend(Backend&&) = default;
    Backend& operator=(Backend&&) = default;

    /// @brief Physical KV blocks the backend holds.
    [[nodiscard]] virtual SizeType numBlocks() const = 0;
    /// @brief Runs one step; returns float32 logits [B, vocab], row-major. May throw: the step's
    /// requests then fail and the executor carries on.
    [[nodiscard]] virtual std::vector<float> forward(StepInputs const& step) = 0;
};

} // namespace kiln
