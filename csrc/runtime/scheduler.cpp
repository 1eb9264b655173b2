#include "runtime/scheduler.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace kiln
{

std::optional<CapacityPolicy> capacityPolicyNamed(std::string const& name)
{
    if (name == "max_utilization")
        return CapacityPolicy::kMaxUtilization;
    if (name == "guaranteed_no_evict")
        return CapacityPolicy::kGuaranteedNoEvict;
    return std::nullopt;
}

std::string capacityPolicyName(CapacityPolicy policy)
{
    return policy == CapacityPolicy::kGuaranteedNoEvict ? "guaranteed_no_evict" : "max_utilization";
}

Scheduler::Scheduler(SchedulerConfig const& config, KvCacheManager& kvCache)
    : mConfig(config)
    , mKvCache(&kvCache)
{
    if (config.maxBatchSize < 1 || config.maxNumTokens < 1 || config.maxSeqLen < 2)
    {
        throw std::invalid_argument("scheduler limits must be positive (max_batch_size >= 1, max_num_tokens >= 1, "
                                    "max_seq_len >= 2), got "
            + std::to_string(config.maxBatchSize) + ", " + std::to_string(config.maxNumTokens) + ", "
            + std::to_string(config.maxSeqLen));
    }
}

std::optional<std::string> Scheduler::checkFits(SizeType numPromptTokens, SizeType maxNewTokens) const
{
    if (numPromptTokens < 1)
    {
        return "the prompt is empty; pass at least one input token";
    }
    if (numPromptTokens >= mConfig.maxSeqLen)
    {
        return "the prompt has " + std::to_string(numPromptTokens) + " tokens but max_seq_len is "
            + std::to_string(mConfig.maxSeqLen) + "; shorten it to at most " + std::to_string(mConfig.maxSeqLen - 1)
            + " tokens or build the engine with a larger max_seq_len";
    }
    if (maxNewTokens < 1)
    {
        return "max_new_tokens is " + std::to_string(maxNewTokens) + "; ask for at least 1 new token";
    }
    // The last token is sampled, never computed, so it needs no KV.
    std::int64_t const maxTokens = std::min<std::int64_t>(
        static_cast<std::int64_t>(numPromptTokens) + maxNewTokens, mConfig.maxSeqLen);
    SizeType const needed = mKvCache->numBlocksFor(static_cast<SizeType>(maxTokens - 1));
    if (needed > mKvCache->numBlocks())
    {
        return "a prompt of " + std::to_string(numPromptTokens) + " tokens plus up to " + std::to_string(maxNewTokens)
            + " new tokens needs " + std::to_string(needed) + " KV blocks but the cache has only "
            + std::to_string(mKvCache->numBlocks()) + "; lower max_new_tokens or give the backend more KV blocks";
    }
    return std::nullopt;
}

namespace
{
/// Most tokens the next chunk of `seq` may compute from `computed` on: those done before by
/// the stepwise ones, then one a step until they are done.
SizeType chunkCap(Sequence const& seq, SizeType computed)
{
    if (computed >= seq.stepwiseUntil)
    {
        return std::numeric_limits<SizeType>::max();
    }
    return computed < seq.stepwiseFrom ? seq.stepwiseFrom - computed : 1;
}
} // namespace

std::optional<std::string> Scheduler::addRequest(IdType id, std::vector<TokenIdType> prompt, SizeType maxNewTokens,
    SizeType priority, bool stepwisePrompt, std::optional<std::uint64_t> arrival)
{
    if (auto problem = checkFits(static_cast<SizeType>(prompt.size()), maxNewTokens))
    {
        return problem;
    }
    if (mSequences.count(id) != 0)
    {
        return "request id " + std::to_string(id) + " is already scheduled";
    }
    Sequence seq;
    seq.id = id;
    seq.numPromptTokens = static_cast<SizeType>(prompt.size());
    seq.tokens = std::move(prompt);
    seq.maxNewTokens = maxNewTokens;
    seq.priority = priority;
    seq.arrival = arrival ? *arrival : mNextArrival++;
    seq.stepwiseUntil = stepwisePrompt ? seq.numPromptTokens - 1 : 0;
    mSequences.emplace(id, std::move(seq));
    insertWaiting(id);
    return std::nullopt;
}

void Scheduler::insertWaiting(IdType id)
{
    Sequence const& seq = mSequences.at(id);
    // Higher priority first, then arrival; a preempted request keeps its arrival, so it returns
    // ahead of everything of its priority that came later. Searched from the back, where a new
    // request (the latest arrival) goes at once: thousands queued together cost linear time.
    auto const before = std::find_if(mWaiting.rbegin(), mWaiting.rend(), [&](IdType other) {
        Sequence const& o = mSequences.at(other);
        return o.priority > seq.priority || (o.priority == seq.priority && o.arrival < seq.arrival);
    });
    mWaiting.insert(before.base(), id);
}

SchedulerOutput Scheduler::schedule()
{
    SchedulerOutput output;
    SizeType budget = mConfig.maxNumTokens;
    scheduleRunning(/*decodes=*/true, output, budget);
    scheduleRunning(/*decodes=*/false, output, budget);
    // Like vLLM: a step that had to preempt admits nobody, or the victim would thrash.
    if (output.preempted.empty())
    {
        admitWaiting(output, budget);
    }
    for (ScheduledSequence const& s : output.sequences)
    {
        (s.isDecode ? output.numDecodeTokens : output.numPrefillTokens) += s.numTokens;
    }
    return output;
}

void Scheduler::scheduleRunning(bool decodes, SchedulerOutput& output, SizeType& budget)
{
    for (std::size_t i = 0; i < mRunning.size(); ++i)
    {
        if (static_cast<SizeType>(output.sequences.size()) >= mConfig.maxBatchSize || budget <= 0)
        {
            return;
        }
        IdType const id = mRunning[i];
        Sequence& seq = mSequences.at(id);
        bool const isDecode = seq.numRemainingTokens() == 1 && seq.numComputedTokens >= seq.numPromptTokens;
        if (isDecode != decodes)
        {
            continue;
        }
        auto fits = [&] {
            SizeType const want
                = std::min({seq.numRemainingTokens(), budget, chunkCap(seq, seq.numComputedTokens)});
            return std::min(want, mKvCache->tokenCapacity(id) - seq.numComputedTokens);
        };
        SizeType numTokens = fits();
        bool preemptedSelf = false;
        while (numTokens <= 0 && !preemptedSelf)
        {
            IdType const victim = mRunning.back();
            preempt(victim, output, budget);
            preemptedSelf = victim == id;
            numTokens = preemptedSelf ? 0 : fits();
        }
        if (preemptedSelf)
        {
            return; // it was the newest, so nothing after it is left to schedule
        }
        mKvCache->allocate(id, seq.numComputedTokens + numTokens);
        bool const last = seq.numComputedTokens + numTokens == static_cast<SizeType>(seq.tokens.size());
        output.sequences.push_back({id, numTokens, seq.numComputedTokens, decodes, last});
        budget -= numTokens;
    }
}

void Scheduler::preempt(IdType id, SchedulerOutput& output, SizeType& budget)
{
    auto& scheduled = output.sequences;
    auto const it
        = std::find_if(scheduled.begin(), scheduled.end(), [id](ScheduledSequence const& s) { return s.id == id; });
    if (it != scheduled.end())
    {
        budget += it->numTokens;
        scheduled.erase(it);
    }
    mRunning.erase(std::find(mRunning.begin(), mRunning.end(), id));
    mKvCache->removeSequence(id);
    Sequence& seq = mSequences.at(id);
    seq.numComputedTokens = 0;
    ++seq.numPreemptions;
    ++mNumPreemptions;
    insertWaiting(id);
    output.preempted.push_back(id);
}

SizeType Scheduler::finalBlocks(Sequence const& seq) const
{
    SizeType const length = std::min(seq.numPromptTokens + seq.maxNewTokens, mConfig.maxSeqLen);
    return mKvCache->numBlocksFor(std::max(length, static_cast<SizeType>(seq.tokens.size())));
}

SizeType Scheduler::reservedBlocks() const
{
    SizeType reserved = 0;
    for (IdType const id : mRunning)
    {
        auto const held = static_cast<SizeType>(mKvCache->blockIds(id).size());
        reserved += std::max<SizeType>(0, finalBlocks(mSequences.at(id)) - held);
    }
    return reserved;
}

void Scheduler::admitWaiting(SchedulerOutput& output, SizeType& budget)
{
    bool const noEvict = mConfig.capacityPolicy == CapacityPolicy::kGuaranteedNoEvict;
    SizeType reserved = noEvict ? reservedBlocks() : 0;
    while (!mWaiting.empty() && static_cast<SizeType>(output.sequences.size()) < mConfig.maxBatchSize && budget > 0)
    {
        IdType const id = mWaiting.front();
        Sequence& seq = mSequences.at(id);
        // A sequence still to read logits one token at a time reuses only tokens before them.
        std::vector<TokenIdType> prefix;
        bool const stepwise = seq.stepwiseFrom < seq.stepwiseUntil;
        if (stepwise)
        {
            prefix.assign(seq.tokens.begin(), seq.tokens.begin() + seq.stepwiseFrom + 1);
        }
        std::vector<TokenIdType> const& lookup = stepwise ? prefix : seq.tokens;
        SizeType const reusable = mKvCache->numReusableTokens(lookup);
        SizeType const numTokens = std::min(
            {static_cast<SizeType>(seq.tokens.size()) - reusable, budget, chunkCap(seq, reusable)});
        if (!mKvCache->canAddSequence(lookup, reusable + numTokens))
        {
            return; // strict order: later requests wait behind this one
        }
        // Counting reused blocks as new too keeps the guarantee when they sit unreferenced in
        // the free pool (admission takes them out of it).
        if (noEvict && finalBlocks(seq) > mKvCache->numFreeBlocks() - reserved)
        {
            return;
        }
        seq.numComputedTokens = mKvCache->addSequence(id, lookup, reusable + numTokens);
        if (noEvict)
        {
            reserved += std::max<SizeType>(0, finalBlocks(seq) - static_cast<SizeType>(mKvCache->blockIds(id).size()));
        }
        mWaiting.pop_front();
        mRunning.push_back(id);
        bool const last = seq.numComputedTokens + numTokens == static_cast<SizeType>(seq.tokens.size());
        output.sequences.push_back({id, numTokens, seq.numComputedTokens, false, last});
        budget -= numTokens;
    }
}

void Scheduler::updateComputed(SchedulerOutput const& output)
{
    for (ScheduledSequence const& s : output.sequences)
    {
        auto const it = mSequences.find(s.id);
        if (it == mSequences.end())
        {
            continue;
        }
        Sequence& seq = it->second;
        seq.numComputedTokens = s.startPosition + s.numTokens;
        seq.stepwiseFrom = std::max(seq.stepwiseFrom, seq.numComputedTokens);
        mKvCache->cacheComputedBlocks(s.id, seq.tokens, seq.numComputedTokens);
    }
}

void Scheduler::appendToken(IdType id, TokenIdType token)
{
    mSequences.at(id).tokens.push_back(token);
}

bool Scheduler::removeRequest(IdType id)
{
    if (mSequences.erase(id) == 0)
    {
        return false;
    }
    mKvCache->removeSequence(id);
    if (auto const w = std::find(mWaiting.begin(), mWaiting.end(), id); w != mWaiting.end())
    {
        mWaiting.erase(w);
    }
    if (auto const r = std::find(mRunning.begin(), mRunning.end(), id); r != mRunning.end())
    {
        mRunning.erase(r);
    }
    return true;
}

Sequence const* Scheduler::find(IdType id) const
{
    auto const it = mSequences.find(id);
    return it == mSequences.end() ? nullptr : &it->second;
}

std::vector<IdType> Scheduler::waitingIds() const
{
    return {mWaiting.begin(), mWaiting.end()};
}

std::vector<IdType> Scheduler::runningIds() const
{
    return mRunning;
}

bool Scheduler::hasUnfinished() const
{
    return !mSequences.empty();
}

std::int64_t Scheduler::numPreemptions() const
{
    return mNumPreemptions;
}

} // namespace kiln
