#pragma once

#include "gpu/cuda_check.h"
#include "gpu/device_memory.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>

namespace kiln::gpu
{

/// @brief A buffer twice the size of the device's L2 cache, written before each timed run so
/// that the run reads its operands from device memory, as it does inside a decode step (by the
/// time a step reaches a layer again, its weights have long left L2). Timed again and again
/// without it, a GEMM whose weight fits in L2 (o-projection: 33.5 MB of a 50 MB L2) reads it
/// from there, and the choice favours whichever kernel gains most from that. Alive only while
/// candidates are timed; where the memory is not free (the KV cache may hold nearly all of
/// it), runs are timed warm.
class ColdL2
{
public:
    ColdL2()
    {
        int device = 0;
        int l2Bytes = 0;
        KILN_CUDA_CHECK(cudaGetDevice(&device));
        KILN_CUDA_CHECK(cudaDeviceGetAttribute(&l2Bytes, cudaDevAttrL2CacheSize, device));
        std::size_t freeBytes = 0;
        std::size_t totalBytes = 0;
        KILN_CUDA_CHECK(cudaMemGetInfo(&freeBytes, &totalBytes));
        std::size_t const bytes = 2 * static_cast<std::size_t>(l2Bytes);
        if (bytes <= freeBytes)
            mBuffer = DeviceMemory(bytes);
    }

    /// @brief Enqueues the write that evicts L2 (nothing without the buffer).
    void evict(cudaStream_t stream) const
    {
        if (mBuffer.size() > 0)
            KILN_CUDA_CHECK(cudaMemsetAsync(mBuffer.get<void>(), 0, mBuffer.size(), stream));
    }

private:
    DeviceMemory mBuffer;
};

/// @brief The fastest of `reps` runs of `once()` (which enqueues work on `stream`), in
/// microseconds, each timed between two CUDA events after `cold` evicts L2.
template <typename Once>
float bestOfRuns(cudaStream_t stream, int reps, Once&& once, ColdL2 const& cold)
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
        cold.evict(stream);
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
