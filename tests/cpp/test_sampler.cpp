#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

using kiln::Sampler;
using kiln::SamplingConfig;
using kiln::TokenIdType;
using Logits = std::vector<float>;

namespace
{
constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingConfig config(float temperature)
{
    SamplingConfig c;
    c.temperature = temperature;
    return c;
}

/// Logits whose softmax is exactly `probs`.
Logits logitsOf(std::vector<double> const& probs)
{
    Logits l;
    for (double const p : probs)
    {
        l.push_back(static_cast<float>(std::log(p)));
    }
    return l;
}

std::vector<bool> kept(Logits const& l)
{
    std::vector<bool> k;
    for (float const v : l)
    {
        k.push_back(v != -kInf);
    }
    return k;
}
} // namespace

TEST(Sampler, GreedyTakesTheLowestIdAmongTies)
{
    Sampler sampler(4);
    std::mt19937_64 rng(1);
    Logits const logits{1.0F, 3.0F, 3.0F, 2.0F};
    auto const r = sampler.sample(logits.data(), config(0.0F), {0}, 1, rng);
    EXPECT_EQ(r.token, 1);
    double const expected = 3.0 - std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0));
    EXPECT_NEAR(r.logProb, expected, 1e-6);
}

TEST(Sampler, RepetitionPenaltyFollowsHuggingFace)
{
    Logits logits{2.0F, -2.0F, 1.0F, 0.5F};
    SamplingConfig c;
    c.repetitionPenalty = 2.0F;
    // Token 1 appears in the prompt, token 0 twice in the output: each is penalised once.
    kiln::applyPenalties(logits, c, {1, 0, 0}, 1);
    EXPECT_EQ(logits, (Logits{1.0F, -4.0F, 1.0F, 0.5F}));
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly)
{
    Logits logits{2.0F, -2.0F, 1.0F, 0.5F};
    SamplingConfig c;
    c.frequencyPenalty = 0.5F;
    c.presencePenalty = 0.25F;
    kiln::applyPenalties(logits, c, {2, 0, 0, 3}, 1);
    EXPECT_EQ(logits, (Logits{2.0F - 1.25F, -2.0F, 1.0F, 0.5F - 0.75F}));
}

TEST(Sampler, TopKKeepsTiesAtTheKthValue)
{
    Logits logits{1.0F, 5.0F, 3.0F, 5.0F, 2.0F};
    SamplingConfig c;
    c.topK = 2;
    kiln::applyTemperatureAndFilters(logits, c);
    EXPECT_EQ(kept(logits), (std::vector<bool>{false, true, false, true, false}));
    Logits more{1.0F, 5.0F, 3.0F, 5.0F, 2.0F};
    c.topK = 3;
    kiln::applyTemperatureAndFilters(more, c);
    EXPECT_EQ(kept(more), (std::vector<bool>{false, true, true, true, false}));
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP)
{
    SamplingConfig c;
    c.topP = 0.75F;
    Logits a = logitsOf({0.15, 0.5, 0.05, 0.3});
    kiln::applyTemperatureAndFilters(a, c);
    EXPECT_EQ(kept(a), (std::vector<bool>{false, true, false, true}));
    c.topP = 0.85F;
    Logits b = logitsOf({0.15, 0.5, 0.05, 0.3});
    kiln::applyTemperatureAndFilters(b, c);
    EXPECT_EQ(kept(b), (std::vector<bool>{true, true, false, true}));
    c.topP = 0.2F;
    Logits d = logitsOf({0.15, 0.5, 0.05, 0.3});
    kiln::applyTemperatureAndFilters(d, c);
    EXPECT_EQ(kept(d), (std::vector<bool>{false, true, false, false}));
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheTop)
{
    SamplingConfig c;
    c.minP = 0.2F; // threshold 0.1
    Logits a = logitsOf({0.15, 0.5, 0.05, 0.3});
    kiln::applyTemperatureAndFilters(a, c);
    EXPECT_EQ(kept(a), (std::vector<bool>{true, true, false, true}));
}

TEST(Sampler, TemperatureScalesAndLogProbIsOfTheProcessedDistribution)
{
    Logits logits{1.0F, 2.0F, 4.0F};
    SamplingConfig c = config(2.0F);
    c.topK = 2;
    kiln::applyTemperatureAndFilters(logits, c);
    EXPECT_EQ(logits, (Logits{-kInf, 1.0F, 2.0F}));

    Sampler sampler(3);
    std::mt19937_64 rng(7);
    Logits const raw{1.0F, 2.0F, 4.0F};
    for (int i = 0; i < 20; ++i)
    {
        auto const r = sampler.sample(raw.data(), c, {0}, 1, rng);
        ASSERT_TRUE(r.token == 1 || r.token == 2);
        double const z = std::log(std::exp(1.0) + std::exp(2.0));
        EXPECT_NEAR(r.logProb, (r.token == 1 ? 1.0 : 2.0) - z, 1e-6);
    }
}

TEST(Sampler, SeededDrawsAreReproducibleAndFollowTheDistribution)
{
    Sampler sampler(4);
    Logits const logits = logitsOf({0.1, 0.2, 0.3, 0.4});
    SamplingConfig const c = config(1.0F);
    auto draw = [&](std::uint64_t seed, int n) {
        std::mt19937_64 rng(seed);
        std::vector<TokenIdType> out;
        for (int i = 0; i < n; ++i)
        {
            out.push_back(sampler.sample(logits.data(), c, {0}, 1, rng).token);
        }
        return out;
    };
    EXPECT_EQ(draw(42, 50), draw(42, 50));
    EXPECT_NE(draw(42, 50), draw(43, 50));
    std::vector<int> counts(4);
    for (TokenIdType const t : draw(5, 20000))
    {
        ++counts[static_cast<std::size_t>(t)];
    }
    for (int t = 0; t < 4; ++t)
    {
        EXPECT_NEAR(counts[static_cast<std::size_t>(t)] / 20000.0, 0.1 * (t + 1), 0.015) << "token " << t;
    }
}

TEST(Sampler, RejectsRowsWithoutAFiniteValue)
{
    Sampler sampler(3);
    std::mt19937_64 rng(1);
    Logits const nan{0.0F, std::nanf(""), 1.0F};
    EXPECT_THROW((void) sampler.sample(nan.data(), config(0.0F), {0}, 1, rng), std::runtime_error);
    Logits const masked{-kInf, -kInf, -kInf};
    EXPECT_THROW((void) sampler.sample(masked.data(), config(1.0F), {0}, 1, rng), std::runtime_error);
}

TEST(SamplingConfig, ValidatesWithOneLineMessages)
{
    auto problem = [](auto mutate) {
        SamplingConfig c;
        mutate(c);
        return c.validate().value_or("");
    };
    EXPECT_EQ(problem([](SamplingConfig&) {}), "");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.temperature = -0.5F; }),
        "temperature is -0.5 but must be a finite value >= 0 (0 = greedy)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.topK = -1; }), "top_k is -1 but must be >= 0 (0 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.topP = 0.0F; }), "top_p is 0 but must be in (0, 1] (1 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.topP = 1.5F; }), "top_p is 1.5 but must be in (0, 1] (1 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.minP = 2.0F; }), "min_p is 2 but must be in [0, 1] (0 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.repetitionPenalty = 0.0F; }),
        "repetition_penalty is 0 but must be a finite value > 0 (1 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.presencePenalty = 3.0F; }),
        "presence_penalty is 3 but must be in [-2, 2] (0 = off)");
    EXPECT_EQ(problem([](SamplingConfig& c) { c.frequencyPenalty = -2.5F; }),
        "frequency_penalty is -2.5 but must be in [-2, 2] (0 = off)");
}

TEST(Sampler, HeldBackTokensAreNeverPickedAndLeaveTheDistribution)
{
    Sampler sampler(4);
    std::mt19937_64 rng(3);
    Logits const logits{1.0F, 3.0F, 2.5F, 2.0F};
    auto const g = sampler.sample(logits.data(), config(0.0F), {0}, 1, rng, {1, 9});
    EXPECT_EQ(g.token, 2);
    double const z = std::exp(1.0) + std::exp(2.5) + std::exp(2.0);
    EXPECT_NEAR(g.logProb, 2.5 - std::log(z), 1e-6);
    for (int i = 0; i < 200; ++i)
    {
        auto const s = sampler.sample(logits.data(), config(1.0F), {0}, 1, rng, {1, 2});
        EXPECT_TRUE(s.token == 0 || s.token == 3) << s.token;
    }
    std::vector<TokenIdType> const all{0, 1, 2, 3};
    EXPECT_THROW((void) sampler.sample(logits.data(), config(0.0F), {0}, 1, rng, all), std::runtime_error);
}

TEST(Sampler, LogitBiasIsAddedBeforeThePenalties)
{
    Sampler sampler(4);
    std::mt19937_64 rng(5);
    Logits const logits{1.0F, 3.0F, 2.5F, 2.0F};
    SamplingConfig c = config(0.0F);
    c.logitBias = {{3, 1.5F}, {1, -100.0F}};
    EXPECT_FALSE(c.isPlainGreedy());
    auto const g = sampler.sample(logits.data(), c, {0}, 1, rng);
    EXPECT_EQ(g.token, 3);
    double const z = std::exp(1.0) + std::exp(3.0 - 100.0) + std::exp(2.5) + std::exp(3.5);
    EXPECT_NEAR(g.logProb, 3.5 - std::log(z), 1e-6);
    // the repetition penalty divides the biased logit of a seen token: 3.5 / 2 < 2.5
    c.repetitionPenalty = 2.0F;
    EXPECT_EQ(sampler.sample(logits.data(), c, {3}, 0, rng).token, 2);
    c.logitBias = {{2, 101.0F}};
    ASSERT_TRUE(c.validate().has_value());
    EXPECT_NE(c.validate()->find("logit_bias[2] is 101 but must be in [-100, 100]"), std::string::npos);
}

TEST(Sampler, OnlyAllowedTokensArePicked)
{
    Sampler sampler(5);
    std::mt19937_64 rng(9);
    Logits const logits{1.0F, 3.0F, 2.5F, 2.0F, 0.5F};
    SamplingConfig c = config(0.0F);
    c.allowedTokenIds = {4, 3, 0};
    EXPECT_FALSE(c.isPlainGreedy());
    auto const g = sampler.sample(logits.data(), c, {0}, 1, rng);
    EXPECT_EQ(g.token, 3);
    EXPECT_NEAR(g.logProb, 2.0 - std::log(std::exp(1.0) + std::exp(2.0) + std::exp(0.5)), 1e-6);
    c = config(1.0F);
    c.allowedTokenIds = {4, 0};
    for (int i = 0; i < 200; ++i)
    {
        auto const s = sampler.sample(logits.data(), c, {0}, 1, rng, {0});
        EXPECT_EQ(s.token, 4); // 0 is held back, so 4 is all that is left
    }
}

TEST(Sampler, TopLogProbsAreTheMostLikelyUnderTheProcessedDistribution)
{
    Sampler sampler(6);
    std::mt19937_64 rng(11);
    Logits const logits{1.0F, 3.0F, 2.5F, 3.0F, 0.5F, -1.0F};
    auto const g = sampler.sample(logits.data(), config(0.0F), {0}, 1, rng, {}, 3);
    EXPECT_EQ(g.token, 1);
    ASSERT_EQ(g.top.size(), 3U);
    double z = 0.0;
    for (float const l : logits)
    {
        z += std::exp(static_cast<double>(l));
    }
    std::vector<TokenIdType> const order{1, 3, 2}; // equal logits: the lower id first
    for (std::size_t i = 0; i < 3; ++i)
    {
        EXPECT_EQ(g.top[i].token, order[i]);
        EXPECT_NEAR(g.top[i].logProb, logits[static_cast<std::size_t>(order[i])] - std::log(z), 1e-6);
    }
    EXPECT_NEAR(g.top[0].logProb, g.logProb, 1e-7);
    // top-k 2 masks all but two: only they are listed, under the renormalized distribution
    SamplingConfig c = config(1.0F);
    c.topK = 2;
    auto const s = sampler.sample(logits.data(), c, {0}, 1, rng, {}, 5);
    ASSERT_EQ(s.top.size(), 2U);
    EXPECT_NEAR(s.top[0].logProb, std::log(0.5), 1e-6);
    EXPECT_NEAR(s.top[1].logProb, std::log(0.5), 1e-6);
    EXPECT_TRUE(sampler.sample(logits.data(), config(0.0F), {0}, 1, rng).top.empty());
}
