#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kiln
{

/// @brief How admission weighs the KV cache (as TensorRT-LLM's CapacitySchedulerPolicy).
enum class CapacityPolicy : std::uint8_t
{
    /// Admit while the next prompt chunk fits now; when a running request then runs out of
    /// blocks, the newest running request is preempted and recomputed later.
    kMaxUtilization,
    /// Admit only when every running request and the new one can still grow to their full
    /// length (prompt + max new tokens, at most max_seq_len): nothing is ever preempted.
    kGuaranteedNoEvict,
};

/// @brief The policy named `name` ("max_utilization", "guaranteed_no_evict"), or nullopt.
[[nodiscard]] std::optional<CapacityPolicy> capacityPolicyNamed(std::string const& name);
/// @brief The name of `policy`.
[[nodiscard]] std::string capacityPolicyName(CapacityPolicy policy);

} // namespace kiln
