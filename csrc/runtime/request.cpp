#include "runtime/request.h"

#include <algorithm>

namespace kiln
{
namespace
{
bool inVocabulary(TokenIdType token, SizeType vocabSize, bool allowNone)
{
    return (allowNone && token == -1) || (token >= 0 && token < vocabSize);
}

std::string outsideVocabulary(std::string const& what, TokenIdType token, SizeType vocabSize, bool allowNone)
{
    return what + " is " + std::to_string(token) + ", outside the vocabulary [0, " + std::to_string(vocabSize) + ")"
        + (allowNone ? " (use -1 for none)" : "");
}

std::optional<std::string> checkToken(std::string const& what, TokenIdType token, SizeType vocabSize, bool allowNone)
{
    if (inVocabulary(token, vocabSize, allowNone))
    {
        return std::nullopt;
    }
    return outsideVocabulary(what, token, vocabSize, allowNone);
}

/// What is wrong with the token sequences `words` (the request's `list`, each a `word`), or nullopt.
std::optional<std::string> checkWords(std::string const& list, std::string const& word,
    std::vector<std::vector<TokenIdType>> const& words, SizeType vocabSize)
{
    for (std::size_t i = 0; i < words.size(); ++i)
    {
        std::string const name = list + "[" + std::to_string(i) + "]";
        if (words[i].empty())
        {
            return name + " is empty; each " + word + " needs at least one token";
        }
        for (std::size_t j = 0; j < words[i].size(); ++j)
        {
            if (!inVocabulary(words[i][j], vocabSize, false)) // the name is built only for the error
            {
                return outsideVocabulary(name + "[" + std::to_string(j) + "]", words[i][j], vocabSize, false);
            }
        }
    }
    return std::nullopt;
}
} // namespace

std::optional<std::string> validateRequest(Request const& request, SizeType vocabSize)
{
    if (request.inputTokenIds.empty())
    {
        return "input_token_ids is empty; pass at least one token";
    }
    for (std::size_t i = 0; i < request.inputTokenIds.size(); ++i)
    {
        if (!inVocabulary(request.inputTokenIds[i], vocabSize, false)) // the name is built only for the error
        {
            return outsideVocabulary(
                "input_token_ids[" + std::to_string(i) + "]", request.inputTokenIds[i], vocabSize, false);
        }
    }
    if (request.maxNewTokens < 1)
    {
        return "max_new_tokens is " + std::to_string(request.maxNewTokens) + "; ask for at least 1 new token";
    }
    if (auto p = checkToken("end_id", request.endId, vocabSize, true))
    {
        return p;
    }
    if (auto p = checkToken("pad_id", request.padId, vocabSize, true))
    {
        return p;
    }
    if (auto p = checkWords("stop_words", "stop word", request.stopWords, vocabSize))
    {
        return p;
    }
    if (auto p = checkWords("bad_words", "bad word", request.badWords, vocabSize))
    {
        return p;
    }
    if (request.choices.size() > kMaxGuidedChoices)
    {
        return "choices has " + std::to_string(request.choices.size()) + " sequences; pass at most "
            + std::to_string(kMaxGuidedChoices);
    }
    if (auto p = checkWords("choices", "choice", request.choices, vocabSize))
    {
        return p;
    }
    if (request.jsonObject && request.jsonSchema != nullptr)
    {
        return "json_object and json_schema do not combine; ask for one of them";
    }
    // At most one guide shapes the output; all but choices read the vocabulary's token bytes.
    char const* json = request.jsonSchema != nullptr ? "json_schema" : "json_object";
    std::vector<char const*> guides;
    for (auto const& [given, name] : {std::pair{request.grammar != nullptr, "grammar"},
             std::pair{request.regex != nullptr, "regex"}, std::pair{!request.choices.empty(), "choices"},
             std::pair{request.jsonOutput(), json}})
    {
        if (given)
        {
            guides.push_back(name);
        }
    }
    if (guides.size() > 1)
    {
        return std::string(guides[0]) + " and " + guides[1] + " do not combine; ask for one of them";
    }
    if (!guides.empty() && request.choices.empty() && request.tokenTable == nullptr)
    {
        return std::string(guides[0]) + " needs the vocabulary's token bytes (token_table); pass the tokenizer's";
    }
    if (auto p = request.samplingConfig.validate())
    {
        return "sampling_config: " + *p;
    }
    auto const outside = [vocabSize](char const* what, TokenIdType token) -> std::optional<std::string> {
        if (token >= 0 && token < vocabSize)
        {
            return std::nullopt;
        }
        return std::string("sampling_config: ") + what + " has token id " + std::to_string(token)
            + ", outside the vocabulary [0, " + std::to_string(vocabSize) + ")";
    };
    for (TokenIdType const token : request.samplingConfig.allowedTokenIds)
    {
        if (auto p = outside("allowed_token_ids", token))
        {
            return p;
        }
    }
    for (auto const& bias : request.samplingConfig.logitBias)
    {
        if (auto p = outside("logit_bias", bias.first))
        {
            return p;
        }
    }
    if (request.numTopLogProbs < 0 || request.numTopLogProbs > kMaxTopLogProbs)
    {
        return "num_top_log_probs is " + std::to_string(request.numTopLogProbs) + " but must be in [0, "
            + std::to_string(kMaxTopLogProbs) + "]";
    }
    if (request.promptLogProbs && (*request.promptLogProbs < 0 || *request.promptLogProbs > kMaxTopLogProbs))
    {
        return "prompt_log_probs is " + std::to_string(*request.promptLogProbs) + " but must be in [0, "
            + std::to_string(kMaxTopLogProbs) + "] (or unset)";
    }
    if (request.numTopLogProbs > 0 && !request.returnLogProbs)
    {
        return "num_top_log_probs is " + std::to_string(request.numTopLogProbs)
            + " but return_log_probs is false; ask for log-probabilities too";
    }
    if (request.samplingConfig.minTokens > request.maxNewTokens)
    {
        return "sampling_config: min_tokens is " + std::to_string(request.samplingConfig.minTokens)
            + " but max_new_tokens is " + std::to_string(request.maxNewTokens)
            + "; min_tokens must not exceed it";
    }
    if (request.samplingConfig.beamWidth > 1)
    {
        return beamSearchConflict(request);
    }
    return std::nullopt;
}

std::optional<std::string> beamSearchConflict(Request const& request)
{
    SamplingConfig const& c = request.samplingConfig;
    char const* what = nullptr;
    if (!c.isPlainGreedy())
    {
        what = "sampling (set temperature 0, with no penalty, logit bias or allowed tokens)";
    }
    else if (c.minTokens > 0)
    {
        what = "min_tokens";
    }
    else if (request.streaming)
    {
        what = "streaming";
    }
    else if (request.numTopLogProbs > 0 || request.promptLogProbs)
    {
        what = "top or prompt log-probabilities";
    }
    else if (!request.badWords.empty() || !request.choices.empty() || request.jsonOutput() || request.regex
        || request.grammar)
    {
        what = "bad words, choices, JSON, regex or grammar output";
    }
    if (what == nullptr)
    {
        return std::nullopt;
    }
    return "beam search (beam_width " + std::to_string(c.beamWidth) + ") ranks by the model's own log-probabilities "
        + "and returns its beams at the end, so it does not combine with " + what + "; drop one of them";
}

std::vector<TokenIdType> heldBackTokens(
    Request const& request, std::vector<TokenIdType> const& tokens, SizeType numPromptTokens)
{
    std::vector<TokenIdType> held;
    auto const numGenerated = static_cast<std::size_t>(tokens.size()) - static_cast<std::size_t>(numPromptTokens);
    if (static_cast<SizeType>(numGenerated) < request.samplingConfig.minTokens)
    {
        if (request.endId >= 0)
        {
            held.push_back(request.endId);
        }
        for (auto const& word : request.stopWords)
        {
            if (word.size() == 1)
            {
                held.push_back(word.front());
            }
        }
    }
    for (auto const& word : request.badWords)
    {
        std::size_t const rest = word.size() - 1;
        if (!word.empty() && rest <= numGenerated && std::equal(word.begin(), word.end() - 1, tokens.end() - static_cast<std::ptrdiff_t>(rest)))
        {
            held.push_back(word.back());
        }
    }
    return held;
}

std::vector<TokenIdType> choiceTokens(
    Request const& request, std::vector<TokenIdType> const& tokens, SizeType numPromptTokens)
{
    std::vector<TokenIdType> next;
    auto const generated = tokens.begin() + numPromptTokens;
    auto const numGenerated = static_cast<std::size_t>(tokens.end() - generated);
    for (auto const& choice : request.choices)
    {
        if (choice.size() > numGenerated && std::equal(generated, tokens.end(), choice.begin()))
        {
            next.push_back(choice[numGenerated]);
        }
    }
    std::sort(next.begin(), next.end());
    next.erase(std::unique(next.begin(), next.end()), next.end());
    return next;
}

FinishReason stopReason(Request const& request, std::vector<TokenIdType> const& tokens, SizeType numPromptTokens,
    SizeType maxSeqLen, bool objectClosed)
{
    auto const numGenerated = static_cast<SizeType>(tokens.size()) - numPromptTokens;
    for (auto const& choice : request.choices)
    {
        if (static_cast<SizeType>(choice.size()) == numGenerated
            && std::equal(choice.begin(), choice.end(), tokens.begin() + numPromptTokens))
        {
            return FinishReason::kStopWords;
        }
    }
    if ((request.jsonOutput() || request.regex || request.grammar) && objectClosed)
    {
        return FinishReason::kStopWords;
    }
    bool const mayStop = numGenerated >= request.samplingConfig.minTokens;
    if (mayStop && numGenerated > 0 && request.endId >= 0 && tokens.back() == request.endId)
    {
        return FinishReason::kEndId;
    }
    for (auto const& word : request.stopWords)
    {
        if (mayStop && !word.empty() && static_cast<SizeType>(word.size()) <= numGenerated
            && std::equal(word.rbegin(), word.rend(), tokens.rbegin()))
        {
            return FinishReason::kStopWords;
        }
    }
    if (numGenerated >= request.maxNewTokens || static_cast<SizeType>(tokens.size()) >= maxSeqLen)
    {
        return FinishReason::kLength;
    }
    return FinishReason::kNotFinished;
}

} // namespace kiln
