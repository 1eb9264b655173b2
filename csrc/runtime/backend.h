#pragma once

#include "runtime/step_inputs.h"
#include "runtime/types.h"

#include <functional>
#include <stdexcept>
#include <utility>
#include <vector>

namespace kiln
{

/// @brief What one step returns.
///
/// A backend that picks greedy tokens itself (the GPU plan executor) fills `tokens` and
/// `logProbs` for every row and returns `logits` only for StepInputs::logitRows, so a greedy
/// step moves B tokens instead of B x vocab logits. A backend that does not leaves `tokens` empty
/// and returns the logits of every row.
struct StepOutput
{
    std::vector<float> logits;        ///< float32 [rows, vocab], row-major
    std::vector<TokenIdType> tokens;  ///< [B] argmax per row (lowest id on ties); -1: NaN or no finite logit
    std::vector<float> logProbs;      ///< [B] log-softmax at tokens[i]
};

/// @brief Runs the model for one step. Owns the KV cache memory; the executor owns its layout.
///
/// The executor calls start() and then finish() from its own thread, one step at a time. Its
/// host work that does not need the step's output (the step before's responses) runs in
/// start()'s `beside` callback, which a backend that queues its work on a device calls once the
/// device has work enough queued to run meanwhile. By default start() only takes the step and
/// calls `beside` at once, and finish() runs forward(): a backend that computes on the host's
/// thread runs after that work, as it would without the split.
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
    /// @brief Runs one step (see StepOutput). May throw: the step's requests then fail and the
    /// executor carries on.
    [[nodiscard]] virtual StepOutput forward(StepInputs const& step) = 0;
    /// @brief Starts one step and calls `beside` (which does not throw) once, as soon as the
    /// step's work runs without the host; `step` stays alive and unchanged until finish()
    /// returns. May throw as forward() does (then no finish() follows, and `beside` may not
    /// have been called).
    virtual void start(StepInputs const& step, std::function<void()> const& beside)
    {
        mStarted = &step;
        beside();
    }
    /// @brief The output of the step start() began, once it is ready. May throw as forward().
    [[nodiscard]] virtual StepOutput finish()
    {
        if (mStarted == nullptr)
        {
            throw std::logic_error("Backend::finish without a started step");
        }
        return forward(*std::exchange(mStarted, nullptr));
    }

private:
    StepInputs const* mStarted = nullptr; ///< the default start()'s step, until finish()
};

} // namespace kiln
