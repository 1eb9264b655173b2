#pragma once

#include "gpu/cuda_check.h"

#include <cuda_runtime_api.h>

#include <algorithm>

namespace kiln::gpu
{

/// @brief The fastest of `reps` runs of `once()` (which enqueues work on `stream`), in
/// microseconds, each timed between two CUDA events.
template <typename Once>
float bestOfRuns(cudaStream_t stream, int reps, Once&& once)
{
    struct Events
    {
        cudaEvent_t start = nullptr;
        cudaEvent_t stop = nullptr;

        ~Events()
        {
            if (start != nullptr)
                cudaEventDestroy(start);
            if (stop != nullptr)
                cudaEventDestroy(stop);
        }
    } events;
    KILN_CUDA_CHECK(cudaEventCreate(&events.start));
    KILN_CUDA_CHECK(cudaEventCreate(&events.stop));
    float best = -1.0F;
    for (int rep = 0; rep < reps; ++rep)
    {
        KILN_CUDA_CHECK(cudaEventRecord(events.start, stream));
        once();
        KILN_CUDA_CHECK(cudaEventRecord(events.stop, stream));
        KILN_CUDA_CHECK(cudaEventSynchronize(events.stop));
        float ms = 0;
        KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
        best = best < 0 ? ms * 1000.0F : std::min(best, ms * 1000.0F);
    }
    return best;
}

} // namespace kiln::gpu
