#include "runtime/step_inputs.h"

#include <gtest/gtest.h>

using kiln::KvCacheConfig;
using kiln::KvCacheManager;
using kiln::Scheduler;
using I32 = std::vector<std::int32_t>;
using I64 = std::vector<std::int64_t>;

TEST(StepInputs, LaysOutPrefillAndDecodeAsTheAbiSays)
{
    KvCacheManager kv(KvCacheConfig{8, 4, false});
    Scheduler scheduler({4, 64, 16}, kv);
    ASSERT_FALSE(scheduler.addRequest(1, {1, 2, 3, 4, 5, 6}, 4));
    ASSERT_FALSE(scheduler.addRequest(2, {11, 12, 13}, 4));

    auto const prefill = scheduler.schedule();
    auto const a = kiln::buildStepInputs(prefill, scheduler, kv, 4);
    EXPECT_EQ(a.numSequences, 2);
    EXPECT_EQ(a.inputIds, (I32{1, 2, 3, 4, 5, 6, 11, 12, 13}));
    EXPECT_EQ(a.positions, (I32{0, 1, 2, 3, 4, 5, 0, 1, 2}));
    EXPECT_EQ(a.slotMapping, (I64{0, 1, 2, 3, 4, 5, 8, 9, 10}));
    EXPECT_EQ(a.blockTables, (I32{0, 1, 0, 0, 2, 0, 0, 0}));
    EXPECT_EQ(a.contextLens, (I32{6, 3}));
    EXPECT_EQ(a.queryStart, (I32{0, 6, 9}));
    EXPECT_EQ(a.lastTokenIndex, (I32{5, 8}));

    scheduler.updateComputed(prefill);
    scheduler.appendToken(1, 7);
    scheduler.appendToken(2, 8);
    auto const decode = scheduler.schedule();
    auto const b = kiln::buildStepInputs(decode, scheduler, kv, 4);
    EXPECT_EQ(b.inputIds, (I32{7, 8}));
    EXPECT_EQ(b.positions, (I32{6, 3}));
    EXPECT_EQ(b.slotMapping, (I64{6, 11}));
    EXPECT_EQ(b.blockTables, (I32{0, 1, 0, 0, 2, 0, 0, 0}));
    EXPECT_EQ(b.contextLens, (I32{7, 4}));
    EXPECT_EQ(b.queryStart, (I32{0, 1, 2}));
    EXPECT_EQ(b.lastTokenIndex, (I32{0, 1}));
}
