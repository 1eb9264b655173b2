#pragma once

namespace kiln
{

/// @brief Why a request stopped.
enum class FinishReason
{
    kNotFinished, ///< a streaming response that is not the last
    kEndId,
    kStopWords,
    kLength, ///< max_new_tokens or max_seq_len reached
    kCancelled,
    kError,
};

/// @brief Lower-case name of a finish reason ("end_id", "stop_words", ...).
[[nodiscard]] inline char const* toString(FinishReason reason)
{
    switch (reason)
    {
    case FinishReason::kNotFinished: return "not_finished";
    case FinishReason::kEndId: return "end_id";
    case FinishReason::kStopWords: return "stop_words";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    }
    return "unknown";
}

} // namespace kiln
