#include "runtime/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

using namespace kiln;

namespace
{
/// A model over a small vocabulary whose log-probabilities depend on the tokens so far.
std::vector<TokenLogProb> distribution(std::vector<TokenIdType> const& tokens, SizeType vocab)
{
    std::vector<double> logits;
    for (TokenIdType v = 0; v < vocab; ++v)
    {
        int seed = v * 7 + 3;
        for (TokenIdType t : tokens)
        {
            seed = seed * 31 + t + 1;
        }
        logits.push_back(static_cast<double>(seed % 97) / 13.0);
    }
    double z = 0.0;
    for (double l : logits)
    {
        z += std::exp(l);
    }
    std::vector<TokenLogProb> out;
    for (TokenIdType v = 0; v < vocab; ++v)
    {
        out.push_back({v, static_cast<float>(logits[static_cast<std::size_t>(v)] - std::log(z))});
    }
    std::stable_sort(out.begin(), out.end(), [](TokenLogProb a, TokenLogProb b) { return a.logProb > b.logProb; });
    return out;
}

/// Runs `search` to its end on the model above.
void run(BeamSearch& search, SizeType vocab)
{
    for (int steps = 0; steps < 64; ++steps)
    {
        std::vector<std::vector<TokenLogProb>> candidates;
        for (BeamHypothesis const& beam : search.running())
        {
            auto d = distribution(beam.tokens, vocab);
            d.resize(std::min<std::size_t>(d.size(), static_cast<std::size_t>(search.numCandidates())));
            candidates.push_back(d);
        }
        if (!search.step(candidates))
        {
            return;
        }
    }
    FAIL() << "the search did not end";
}
} // namespace

TEST(BeamSearch, AWideEnoughSearchRanksEverySequence)
{
    // 3 tokens, 3 generated, 27 beams: every sequence is kept and finishes at the length limit,
    // ranked by its summed log-probability (length_penalty 0: no normalisation).
    constexpr SizeType kVocab = 3;
    BeamSearch search(27, 4, 7, 0.0F, EarlyStopping::kNever, -1, {});
    run(search, kVocab);
    std::multimap<float, std::vector<TokenIdType>, std::greater<>> all;
    for (TokenIdType a = 0; a < kVocab; ++a)
        for (TokenIdType b = 0; b < kVocab; ++b)
            for (TokenIdType c = 0; c < kVocab; ++c)
            {
                float sum = 0.0F;
                std::vector<TokenIdType> seq;
                for (TokenIdType t : {a, b, c})
                {
                    auto const d = distribution(seq, kVocab);
                    sum += std::find_if(d.begin(), d.end(), [t](TokenLogProb x) { return x.token == t; })->logProb;
                    seq.push_back(t);
                }
                all.emplace(sum, seq);
            }
    auto const& found = search.hypotheses();
    ASSERT_EQ(found.size(), 27U);
    auto expected = all.begin();
    for (BeamHypothesis const& h : found)
    {
        EXPECT_TRUE(h.finished);
        EXPECT_EQ(h.tokens, expected->second);
        EXPECT_NEAR(h.cumLogProb, expected->first, 1e-5);
        EXPECT_NEAR(h.score, h.cumLogProb, 1e-5);
        float sum = 0.0F;
        for (float lp : h.logProbs)
        {
            sum += lp;
        }
        EXPECT_NEAR(sum, h.cumLogProb, 1e-5);
        ++expected;
    }
}

TEST(BeamSearch, EndIdFinishesABeamScoredByItsLength)
{
    // Two beams; the first step's best continuation is the end id (token 0): it finishes at
    // once, scored cum / 1^lp, and the two best others run on.
    BeamSearch search(2, 5, 20, 1.0F, EarlyStopping::kWhenFull, 0, {});
    ASSERT_EQ(search.running().size(), 1U);
    EXPECT_TRUE(search.step({{{0, -0.1F}, {4, -0.5F}, {6, -1.0F}, {7, -3.0F}}}));
    ASSERT_EQ(search.running().size(), 2U);
    EXPECT_EQ(search.running()[0].tokens, (std::vector<TokenIdType>{4}));
    EXPECT_EQ(search.running()[1].tokens, (std::vector<TokenIdType>{6}));
    EXPECT_TRUE(search.hypotheses()[0].finished);
    EXPECT_EQ(search.hypotheses()[0].tokens, (std::vector<TokenIdType>{0}));
    EXPECT_FLOAT_EQ(search.hypotheses()[0].score, -0.1F);
    EXPECT_FALSE(search.hypotheses()[1].finished);
    // Beam 1 ends with [6, 0] (-1.2, scored -0.6): ranked second among the top 2, it finishes;
    // both slots are full, so with early stopping the search ends.
    EXPECT_FALSE(search.step({{{5, -2.0F}, {0, -2.5F}, {3, -4.0F}, {2, -5.0F}},
        {{0, -0.2F}, {1, -3.0F}, {2, -3.5F}, {3, -6.0F}}}));
    auto const& done = search.hypotheses();
    EXPECT_EQ(done[0].tokens, (std::vector<TokenIdType>{0}));
    EXPECT_EQ(done[1].tokens, (std::vector<TokenIdType>{6, 0}));
    EXPECT_FLOAT_EQ(done[1].score, -0.6F);
    EXPECT_FLOAT_EQ(done[1].cumLogProb, -1.2F);
    EXPECT_EQ(done[1].logProbs, (std::vector<float>{-1.0F, -0.2F}));
}

TEST(BeamSearch, StopWordsAndTheLengthLimitEndBeams)
{
    BeamSearch search(2, 3, 5, 1.0F, EarlyStopping::kNever, -1, {{4, 5}});
    EXPECT_TRUE(search.step({{{4, -0.1F}, {1, -0.2F}, {2, -2.0F}, {3, -3.0F}}}));
    // [4, 5] ends on the stop word; at 5 tokens every continuation ends: the search is over.
    EXPECT_FALSE(search.step({{{5, -0.1F}, {1, -1.0F}, {2, -2.0F}, {3, -3.0F}},
        {{1, -0.3F}, {2, -1.0F}, {3, -2.0F}, {5, -3.0F}}}));
    auto const& done = search.hypotheses();
    EXPECT_EQ(done[0].tokens, (std::vector<TokenIdType>{4, 5}));
    EXPECT_EQ(done[1].tokens, (std::vector<TokenIdType>{1, 1}));
    EXPECT_TRUE(done[0].finished && done[1].finished);
}

TEST(BeamSearch, EarlyStoppingModes)
{
    // One beam, length_penalty 1: the end id finishes at once with -0.5 while [3] runs on at
    // -0.6. Early stopping 1 ends with the one slot full; the heuristic ends too (-0.6 / 1
    // cannot beat -0.5); "never" assumes [3] might reach the length limit (-0.6 / 48) and goes on.
    for (EarlyStopping mode : {EarlyStopping::kWhenFull, EarlyStopping::kHeuristic, EarlyStopping::kNever})
    {
        BeamSearch search(1, 2, 50, 1.0F, mode, 0, {});
        EXPECT_EQ(search.step({{{0, -0.5F}, {3, -0.6F}}}), mode == EarlyStopping::kNever);
        EXPECT_EQ(search.hypotheses()[0].tokens, (std::vector<TokenIdType>{0}));
        EXPECT_EQ(search.running()[0].tokens, (std::vector<TokenIdType>{3}));
    }
    // With length_penalty 0 (scores only fall) "never" stops as the heuristic does.
    BeamSearch plain(1, 2, 50, 0.0F, EarlyStopping::kNever, 0, {});
    EXPECT_FALSE(plain.step({{{0, -0.5F}, {3, -0.6F}}}));
}

TEST(BeamSearch, RefusesNoRoom)
{
    EXPECT_THROW(BeamSearch(2, 5, 5, 1.0F, EarlyStopping::kWhenFull, 0, {}), std::invalid_argument);
    EXPECT_THROW(BeamSearch(0, 5, 9, 1.0F, EarlyStopping::kWhenFull, 0, {}), std::invalid_argument);
}
