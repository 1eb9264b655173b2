#pragma once

#include "runtime/grammar.h"
#include "runtime/json_object.h"
#include "runtime/regex_dfa.h"
#include "runtime/response.h"
#include "runtime/sampling_config.h"
#include "runtime/types.h"

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace kiln
{

/// @brief One generation request as a client submits it.
struct Request
{
    std::vector<TokenIdType> inputTokenIds;
    SizeType maxNewTokens = 16;
    SamplingConfig samplingConfig;
    TokenIdType endId = -1; ///< stop after generating this token; -1 = never
    TokenIdType padId = -1; ///< kept for callers that pad batches; outputs are never padded
    /// @brief Stop once the generated tokens end with any of these sequences; the matched
    /// sequence stays in the output (as in TensorRT-LLM), and so does end_id.
    std::vector<std::vector<TokenIdType>> stopWords;
    bool streaming = false;      ///< a response per step with the new tokens
    bool returnLogProbs = false; ///< log-probability of each generated token
    SizeType priority = 0;       ///< higher is admitted first; equal ones in arrival order
    /// With returnLogProbs: at each generated token, this many most likely tokens and their
    /// log-probabilities too (OpenAI's top_logprobs), at most kMaxTopLogProbs
    SizeType numTopLogProbs = 0;
    /// @brief Sequences never generated: a word's last token is not picked where the generated
    /// tokens end with the rest of it (TensorRT-LLM's bad_words_list, vLLM's bad_words)
    std::vector<std::vector<TokenIdType>> badWords;
    /// @brief When not empty, the output is one of these sequences (vLLM's guided_choice): each
    /// token is picked among those that continue one, and the request stops as soon as its
    /// generated tokens are one (a choice that begins another is taken when complete)
    std::vector<std::vector<TokenIdType>> choices;
    /// @brief The output is one JSON object (OpenAI's response_format json_object): each token
    /// is picked among those whose bytes in `tokenTable` continue one, and the request stops
    /// (kStopWords) once it is complete
    bool jsonObject = false;
    std::shared_ptr<TokenTable const> tokenTable; ///< the vocabulary's bytes, for JSON output
    /// @brief The output is one JSON value valid against this schema (OpenAI's response_format
    /// json_schema, vLLM's guided_json), picked and stopped as for jsonObject
    std::shared_ptr<JsonSchema const> jsonSchema;
    /// @brief With a value k: the log-probability of each prompt token after the first under the
    /// model's raw distribution given the tokens before it, and the k most likely tokens there
    /// (vLLM's prompt_logprobs, the prompt's part of OpenAI's echo with logprobs). The prompt is
    /// then computed one token a step and never taken from the prefix cache, so every position's
    /// logits are read (at most kMaxTopLogProbs).
    std::optional<SizeType> promptLogProbs;

    /// @brief The whole output matches this automaton's pattern (vLLM's guided_regex): each
    /// token is picked among those whose bytes in `tokenTable` keep a match reachable, end_id
    /// only where the text matches, and the request stops (kStopWords) once nothing may follow.
    std::shared_ptr<RegexDfa const> regex;

    /// @brief The whole output is a sentence of this grammar (vLLM's guided_grammar,
    /// TensorRT-LLM's ebnf_grammar guide): picked, ended and stopped as for regex.
    std::shared_ptr<Grammar const> grammar;

    /// @brief Whether the output is JSON (jsonObject or jsonSchema).
    [[nodiscard]] bool jsonOutput() const
    {
        return jsonObject || jsonSchema != nullptr;
    }
};

/// @brief The most choices a request may give.
inline constexpr std::size_t kMaxGuidedChoices = 1024;

/// @brief The most alternatives a request may ask for at each token (vLLM's default max_logprobs).
inline constexpr SizeType kMaxTopLogProbs = 20;

/// @brief What is wrong with `request` for a model of `vocabSize` tokens (one line), or nullopt.
/// Lengths against max_seq_len and the KV pool are the scheduler's to check.
[[nodiscard]] std::optional<std::string> validateRequest(Request const& request, SizeType vocabSize);

/// @brief With beam_width > 1, what in `request` beam search does not combine with (one line), or nullopt.
[[nodiscard]] std::optional<std::string> beamSearchConflict(Request const& request);

/// @brief The tokens `request` may not pick as its next one, its sequence being `tokens` (prompt
/// first): end_id and its one-token stop words while it has generated fewer than min_tokens,
/// and each bad word's last token where the generated tokens end with the rest of the word.
[[nodiscard]] std::vector<TokenIdType> heldBackTokens(
    Request const& request, std::vector<TokenIdType> const& tokens, SizeType numPromptTokens);

/// @brief With choices, the tokens that continue one of them after the generated tokens
/// (sorted, unique); empty without choices.
[[nodiscard]] std::vector<TokenIdType> choiceTokens(
    Request const& request, std::vector<TokenIdType> const& tokens, SizeType numPromptTokens);

/// @brief Why `request` stops now that its sequence is `tokens` (prompt first), or kNotFinished.
/// End id first, then stop words (matched among generated tokens only), then the length limits;
/// before min_tokens are generated, only the length limits. A request with choices stops
/// (kStopWords) once its generated tokens are one of them, and a JSON one once `objectClosed`
/// (its JsonObjectPrefix is complete).
[[nodiscard]] FinishReason stopReason(Request const& request, std::vector<TokenIdType> const& tokens,
    SizeType numPromptTokens, SizeType maxSeqLen, bool objectClosed = false);

} // namespace kiln
