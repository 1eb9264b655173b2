#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace kiln::gpu
{

/// @brief Throws std::runtime_error naming the failed call and CUDA's message.
inline void checkCuda(cudaError_t status, char const* call, char const* file, int line)
{
    if (status != cudaSuccess)
    {
        throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(status) + " ("
            + cudaGetErrorString(status) + ") in " + call + " at " + file + ":" + std::to_string(line));
    }
}

} // namespace kiln::gpu

#define KILN_CUDA_CHECK(call) ::kiln::gpu::checkCuda((call), #call, __FILE__, __LINE__)
