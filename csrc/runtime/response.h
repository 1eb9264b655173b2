#pragma once

#include "runtime/beam_search.h"
#include "runtime/finish_reason.h"
#include "runtime/types.h"

#include <string>
#include <vector>

namespace kiln
{

/// @brief What the executor returns for a request: some or all of its new tokens.
struct Response
{
    IdType requestId = 0;
    /// @brief Tokens not sent before: when streaming, those of the last step; otherwise, in the
    /// single final response, all generated tokens.
    std::vector<TokenIdType> outputTokenIds;
    std::vector<float> logProbs; ///< one per output token when requested
    bool isFinal = false;
    FinishReason finishReason = FinishReason::kNotFinished;
    std::string errorMessage; ///< one line, when finishReason is kError
    /// @brief One list per output token when the request asked for numTopLogProbs: the most
    /// likely tokens there, most likely first.
    std::vector<std::vector<TokenLogProb>> topLogProbs;
    /// @brief In a request's first response, when it asked for promptLogProbs: the log-probability
    /// of each prompt token after the first (as far as the prompt was computed), and with k > 0 the
    /// k most likely tokens at each of those positions.
    std::vector<float> promptLogProbs;
    std::vector<SizeType> promptRanks; ///< of those tokens: 1 + the tokens more likely there
    std::vector<std::vector<TokenLogProb>> promptTopLogProbs;
    /// @brief With beam search, in the final response of a search that ended: its beam_width
    /// hypotheses, best first (outputTokenIds, and logProbs when asked for, are the first's).
    std::vector<BeamHypothesis> beams;
};

} // namespace kiln
