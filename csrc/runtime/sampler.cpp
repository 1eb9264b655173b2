#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace kiln
{
namespace
{
constexpr float kMasked = -std::numeric_limits<float>::infinity();

/// Largest logit, throwing on a row the model could not have produced sensibly.
float checkedMax(std::vector<float> const& logits)
{
    float best = kMasked;
    for (float const l : logits)
    {
        if (std::isnan(l))
        {
            throw std::runtime_error("the backend returned NaN logits");
        }
        best = std::max(best, l);
    }
    if (!std::isfinite(best))
    {
        throw std::runtime_error("the backend returned a logits row with no finite value");
    }
    return best;
}

/// Softmax denominator relative to `maxLogit`.
double expSum(std::vector<float> const& logits, float maxLogit)
{
    double sum = 0.0;
    for (float const l : logits)
    {
        sum += std::exp(static_cast<double>(l) - maxLogit);
    }
    return sum;
}

/// Uniform in [0, 1) from the top 53 bits: the same on every standard library.
double uniform(std::mt19937_64& rng)
{
    return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

void topK(std::vector<float>& logits, SizeType k)
{
    if (k <= 0 || k >= static_cast<SizeType>(logits.size()))
    {
        return;
    }
    std::vector<float> sorted = logits;
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
    float const kth = sorted[static_cast<std::size_t>(k) - 1];
    for (float& l : logits)
    {
        l = l < kth ? kMasked : l;
    }
}

void topP(std::vector<float>& logits, float p)
{
    if (p >= 1.0F)
    {
        return;
    }
    float const maxLogit = checkedMax(logits);
    double const sum = expSum(logits, maxLogit);
    std::vector<TokenIdType> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](TokenIdType a, TokenIdType b) { return logits[a] > logits[b]; });
    // Keep a token while the mass before it is below p: the smallest set reaching p.
    double before = 0.0;
    for (TokenIdType const t : order)
    {
        if (before >= p)
        {
            logits[t] = kMasked;
            continue;
        }
        before += std::exp(static_cast<double>(logits[t]) - maxLogit) / sum;
    }
}

void minP(std::vector<float>& logits, float p)
{
    if (p <= 0.0F)
    {
        return;
    }
    float const maxLogit = checkedMax(logits);
    // prob / max prob = exp(logit - max logit).
    for (float& l : logits)
    {
        l = std::exp(static_cast<double>(l) - maxLogit) < p ? kMasked : l;
    }
}
} // namespace

void applyPenalties(std::vector<float>& logits, SamplingConfig const& config, std::vector<TokenIdType> const& tokens,
    SizeType numPromptTokens)
{
    auto const vocab = static_cast<TokenIdType>(logits.size());
    auto inVocab = [vocab](TokenIdType t) { return t >= 0 && t < vocab; };
    if (config.repetitionPenalty != 1.0F)
    {
        std::vector<TokenIdType> seen(tokens.begin(), tokens.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        for (TokenIdType const t : seen)
        {
            if (inVocab(t))
            {
                float& l = logits[static_cast<std::size_t>(t)];
                l = l < 0.0F ? l * config.repetitionPenalty : l / config.repetitionPenalty;
            }
        }
    }
    if (config.presencePenalty != 0.0F || config.frequencyPenalty != 0.0F)
    {
        std::vector<TokenIdType> generated(tokens.begin() + std::min<std::size_t>(numPromptTokens, tokens.size()), tokens.end());
        std::sort(generated.begin(), generated.end());
        for (std::size_t i = 0; i < generated.size();)
        {
            std::size_t j = i;
            while (j < generated.size() && generated[j] == generated[i])
            {
                ++j;
            }
            if (inVocab(generated[i]))
            {
                logits[static_cast<std::size_t>(generated[i])]
                    -= static_cast<float>(j - i) * config.frequencyPenalty + config.presencePenalty;
            }
            i = j;
        }
    }
}

void applyTemperatureAndFilters(std::vector<float>& logits, SamplingConfig const& config)
{
    if (config.isGreedy())
    {
        throw std::logic_error("applyTemperatureAndFilters needs a temperature > 0");
    }
    for (float& l : logits)
    {
        l /= config.temperature;
    }
    topK(logits, config.topK);
    topP(logits, config.topP);
    minP(logits, config.minP);
}

float logSoftmaxAt(std::vector<float> const& logits, TokenIdType token)
{
    float const maxLogit = checkedMax(logits);
    double const sum = expSum(logits, maxLogit);
    return static_cast<float>(static_cast<double>(logits.at(static_cast<std::size_t>(token))) - maxLogit - std::log(sum));
}

Sampler::Sampler(SizeType vocabSize)
    : mVocabSize(vocabSize)
    , mScratch(static_cast<std::size_t>(vocabSize))
{
    if (vocabSize < 1)
    {
        throw std::invalid_argument("vocab_size must be at least 1, got " + std::to_string(vocabSize));
    }
}

SampleResult Sampler::sample(float const* logits, SamplingConfig const& config,
    std::vector<TokenIdType> const& tokens, SizeType numPromptTokens, std::mt19937_64& rng,
    std::vector<TokenIdType> const& heldBack, SizeType numTop, std::vector<TokenIdType> const& only)
{
    SampleResult result = pick(logits, config, tokens, numPromptTokens, rng, heldBack, only);
    if (numTop > 0)
    {
        // mScratch holds the processed logits the pick was made from.
        float const maxLogit = checkedMax(mScratch);
        appendTop(result, numTop, maxLogit, std::log(expSum(mScratch, maxLogit)));
    }
    return result;
}

SampleResult Sampler::score(float const* logits, TokenIdType token, SizeType numTop)
{
    if (token < 0 || token >= mVocabSize)
    {
        throw std::runtime_error("token " + std::to_string(token) + " is outside the vocabulary of "
            + std::to_string(mVocabSize));
    }
    mScratch.assign(logits, logits + mVocabSize);
    float const maxLogit = checkedMax(mScratch);
    double const logSum = std::log(expSum(mScratch, maxLogit));
    double const l = mScratch[static_cast<std::size_t>(token)];
    SampleResult result{token, static_cast<float>(l - maxLogit - logSum), {}, 1};
    for (float const other : mScratch)
    {
        result.rank += other > l ? 1 : 0;
    }
    appendTop(result, numTop, maxLogit, logSum);
    return result;
}

void Sampler::appendTop(SampleResult& result, SizeType numTop, float maxLogit, double logSum)
{
    auto const n = std::min<std::size_t>(static_cast<std::size_t>(std::max<SizeType>(numTop, 0)), mScratch.size());
    if (n == 0)
    {
        return;
    }
    mOrder.resize(mScratch.size());
    std::iota(mOrder.begin(), mOrder.end(), 0);
    auto const higher = [this](TokenIdType a, TokenIdType b) {
        float const la = mScratch[static_cast<std::size_t>(a)];
        float const lb = mScratch[static_cast<std::size_t>(b)];
        return la > lb || (la == lb && a < b);
    };
    std::partial_sort(mOrder.begin(), mOrder.begin() + static_cast<std::ptrdiff_t>(n), mOrder.end(), higher);
    for (std::size_t i = 0; i < n && mScratch[static_cast<std::size_t>(mOrder[i])] != kMasked; ++i)
    {
        double const l = mScratch[static_cast<std::size_t>(mOrder[i])];
        result.top.push_back({mOrder[i], static_cast<float>(l - maxLogit - logSum)});
    }
}

void Sampler::keepOnly(std::vector<TokenIdType> const& keep)
{
    mAllowed.assign(mScratch.size(), kMasked);
    for (TokenIdType const t : keep)
    {
        if (t >= 0 && t < mVocabSize)
        {
            mAllowed[static_cast<std::size_t>(t)] = mScratch[static_cast<std::size_t>(t)];
        }
    }
    mScratch.swap(mAllowed);
}

SampleResult Sampler::pick(float const* logits, SamplingConfig const& config, std::vector<TokenIdType> const& tokens,
    SizeType numPromptTokens, std::mt19937_64& rng, std::vector<TokenIdType> const& heldBack,
    std::vector<TokenIdType> const& only)
{
    mScratch.assign(logits, logits + mVocabSize);
    for (auto const& [token, bias] : config.logitBias)
    {
        if (token >= 0 && token < mVocabSize)
        {
            mScratch[static_cast<std::size_t>(token)] += bias;
        }
    }
    applyPenalties(mScratch, config, tokens, numPromptTokens);
    for (TokenIdType const t : heldBack)
    {
        if (t >= 0 && t < mVocabSize)
        {
            mScratch[static_cast<std::size_t>(t)] = kMasked;
        }
    }
    if (!config.allowedTokenIds.empty())
    {
        keepOnly(config.allowedTokenIds);
    }
    if (!only.empty())
    {
        keepOnly(only);
    }
    if (config.isGreedy())
    {
        checkedMax(mScratch);
        auto const best = static_cast<TokenIdType>(std::max_element(mScratch.begin(), mScratch.end()) - mScratch.begin());
        return {best, logSoftmaxAt(mScratch, best), {}};
    }
    applyTemperatureAndFilters(mScratch, config);
    float const maxLogit = checkedMax(mScratch);
    double const sum = expSum(mScratch, maxLogit);
    double const target = uniform(rng) * sum;
    double cumulative = 0.0;
    TokenIdType chosen = -1;
    for (TokenIdType t = 0; t < mVocabSize; ++t)
    {
        double const weight = std::exp(static_cast<double>(mScratch[static_cast<std::size_t>(t)]) - maxLogit);
        if (weight > 0.0)
        {
            chosen = t; // the last kept token absorbs rounding at the top end
            cumulative += weight;
            if (cumulative > target)
            {
                break;
            }
        }
    }
    auto const logProb = static_cast<float>(
        static_cast<double>(mScratch[static_cast<std::size_t>(chosen)]) - maxLogit - std::log(sum));
    return {chosen, logProb, {}};
}

} // namespace kiln
