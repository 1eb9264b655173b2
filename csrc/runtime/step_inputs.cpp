#include "runtime/step_inputs.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kiln
{

StepInputs buildStepInputs(SchedulerOutput const& output, Scheduler const& scheduler,
    KvCacheManager const& kvCache, SizeType maxBlocksPerSeq)
{
    StepInputs step;
    auto const numSeqs = static_cast<SizeType>(output.sequences.size());
    SizeType const tpb = kvCache.tokensPerBlock();
    step.numSequences = numSeqs;
    step.maxBlocksPerSeq = maxBlocksPerSeq;
    step.blockTables.assign(static_cast<std::size_t>(numSeqs) * maxBlocksPerSeq, 0);
    step.queryStart.push_back(0);
    for (SizeType i = 0; i < numSeqs; ++i)
    {
        ScheduledSequence const& s = output.sequences[static_cast<std::size_t>(i)];
        Sequence const* seq = scheduler.find(s.id);
        std::vector<BlockIdType> const& blocks = kvCache.blockIds(s.id);
        if (seq == nullptr || static_cast<SizeType>(blocks.size()) > maxBlocksPerSeq)
        {
            throw std::logic_error("sequence " + std::to_string(s.id) + " does not fit the step's block table");
        }
        for (SizeType pos = s.startPosition; pos < s.startPosition + s.numTokens; ++pos)
        {
            step.inputIds.push_back(seq->tokens[static_cast<std::size_t>(pos)]);
            step.positions.push_back(pos);
            step.slotMapping.push_back(static_cast<std::int64_t>(blocks[static_cast<std::size_t>(pos / tpb)]) * tpb + pos % tpb);
        }
        std::copy(blocks.begin(), blocks.end(), step.blockTables.begin() + static_cast<std::ptrdiff_t>(i) * maxBlocksPerSeq);
        step.contextLens.push_back(s.startPosition + s.numTokens);
        step.queryStart.push_back(step.numTokens());
        step.lastTokenIndex.push_back(step.numTokens() - 1);
    }
    return step;
}

} // namespace kiln
