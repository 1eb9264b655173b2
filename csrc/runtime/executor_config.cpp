#include "runtime/executor_config.h"

namespace kiln
{
namespace
{
std::optional<std::string> atLeast(char const* name, SizeType value, SizeType minimum)
{
    if (value >= minimum)
    {
        return std::nullopt;
    }
    return std::string(name) + " is " + std::to_string(value) + " but must be at least " + std::to_string(minimum);
}
} // namespace

std::optional<std::string> ExecutorConfig::validate() const
{
    for (auto const& problem : {atLeast("max_batch_size", maxBatchSize, 1), atLeast("max_num_tokens", maxNumTokens, 1),
             atLeast("max_seq_len", maxSeqLen, 2), atLeast("tokens_per_block", tokensPerBlock, 1),
             atLeast("vocab_size", vocabSize, 1)})
    {
        if (problem)
        {
            return problem;
        }
    }
    return std::nullopt;
}

} // namespace kiln
