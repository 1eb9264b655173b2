// The executor's own host time a step, with a backend that returns at once: N requests of
// 128 prompt and 128 output tokens held back until all are queued (Executor::pause), greedy
// picks "from the backend" as the GPU plan executor returns them, streaming or not, one thread
// taking the responses as the runner's router does. Prints how long the first response took
// after the requests were released (admission and the first prompt step; with streaming
// only: the non-streaming first response is a final one), and the decode-only steps' mean time:
// scheduling, step inputs, accepting tokens and making responses (the backend's share ~0).
// Build: g++ -O2 -std=c++20 -I csrc executor_host.cpp libkiln_runtime.a -lpthread
#include "runtime/backend.h"
#include "runtime/executor.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

using namespace kiln;

namespace
{
struct Instant final : Backend
{
    explicit Instant(SizeType blocks)
        : mBlocks(blocks)
    {
    }

    [[nodiscard]] SizeType numBlocks() const override
    {
        return mBlocks;
    }

    [[nodiscard]] StepOutput forward(StepInputs const& step) override
    {
        StepOutput out;
        out.tokens.assign(static_cast<std::size_t>(step.numSequences), 7);
        out.logProbs.assign(static_cast<std::size_t>(step.numSequences), -0.5F);
        return out;
    }

    SizeType mBlocks;
};

void run(int requests, bool streaming)
{
    ExecutorConfig c;
    c.maxBatchSize = 4096;
    c.maxNumTokens = 8192;
    c.maxSeqLen = 256;
    c.tokensPerBlock = 32;
    c.vocabSize = 128256;
    c.enableKvCacheReuse = false;
    Executor executor(c, std::make_shared<Instant>(requests * 8 + 64));
    executor.pause();
    for (int i = 0; i < requests; ++i)
    {
        Request r;
        r.inputTokenIds.assign(128, 5 + i % 1000);
        r.maxNewTokens = 128;
        r.samplingConfig.temperature = 0.0F;
        r.streaming = streaming;
        static_cast<void>(executor.enqueueRequest(r));
    }
    auto const queued = std::chrono::steady_clock::now();
    executor.resume();
    int finals = 0;
    double firstMs = -1;
    while (finals < requests)
    {
        for (Response const& r : executor.awaitResponses(std::chrono::milliseconds(100)))
        {
            finals += r.isFinal ? 1 : 0;
            if (firstMs < 0)
            {
                firstMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - queued).count();
            }
        }
    }
    auto const s = *executor.getLatestIterationStats();
    double const decodeSteps = static_cast<double>(s.iteration + 1 - s.totalPrefillSteps);
    std::printf("%5d requests, %-13s: first response %6.1f ms after they were released; %3.0f decode-only "
                "steps, %7.1f us each (backend %.1f us)\n",
        requests, streaming ? "streaming" : "not streaming", firstMs, decodeSteps,
        (s.totalStepMicros - s.totalPrefillStepMicros) / decodeSteps,
        (s.totalForwardMicros) / static_cast<double>(s.iteration + 1));
}
} // namespace

int main(int argc, char** argv)
{
    int const requests = argc > 1 ? std::atoi(argv[1]) : 2048;
    for (int i = 0; i < 3; ++i)
    {
        run(requests, true);
        run(requests, false);
    }
}
