#pragma once

#include <cuda.h>

namespace kiln::gpu
{

/// @brief The CUDA driver functions the plan executor uses, fetched through the runtime's
/// cudaGetDriverEntryPointByVersion, so that nothing links against libcuda and kiln._core
/// imports on machines without a driver.
struct DriverApi
{
    decltype(&cuModuleLoadData) moduleLoadData = nullptr;
    decltype(&cuModuleUnload) moduleUnload = nullptr;
    decltype(&cuModuleGetFunction) moduleGetFunction = nullptr;
    decltype(&cuFuncSetAttribute) funcSetAttribute = nullptr;
    decltype(&cuOccupancyMaxActiveBlocksPerMultiprocessor) occupancyMaxActiveBlocksPerMultiprocessor = nullptr;
    decltype(&cuLaunchKernel) launchKernel = nullptr;
    decltype(&cuLaunchKernelEx) launchKernelEx = nullptr;
    decltype(&cuGetErrorString) getErrorString = nullptr;

    /// @brief The process's table, filled on first use; throws std::runtime_error when the
    /// driver is missing or too old.
    [[nodiscard]] static DriverApi const& get();

    /// @brief Throws std::runtime_error naming `call` and the driver's message unless CUDA_SUCCESS.
    void check(CUresult status, char const* call) const;
};

} // namespace kiln::gpu
