#include "gpu/driver.h"

#include "gpu/cuda_check.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace kiln::gpu
{
namespace
{

// The entry points are requested with the ABI of CUDA 12.0: every driver since serves it.
constexpr unsigned int kDriverAbi = 12000;

template <typename Fn>
void load(Fn& fn, char const* symbol)
{
    void* address = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    KILN_CUDA_CHECK(cudaGetDriverEntryPointByVersion(symbol, &address, kDriverAbi, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || address == nullptr)
    {
        throw std::runtime_error(std::string("the CUDA driver has no ") + symbol + ": update the NVIDIA driver");
    }
    fn = reinterpret_cast<Fn>(address);
}

DriverApi loadDriver()
{
    DriverApi api;
    load(api.moduleLoadData, "cuModuleLoadData");
    load(api.moduleUnload, "cuModuleUnload");
    load(api.moduleGetFunction, "cuModuleGetFunction");
    load(api.funcSetAttribute, "cuFuncSetAttribute");
    load(api.occupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor");
    load(api.launchKernel, "cuLaunchKernel");
    load(api.launchKernelEx, "cuLaunchKernelEx");
    load(api.getErrorString, "cuGetErrorString");
    return api;
}

} // namespace

DriverApi const& DriverApi::get()
{
    static DriverApi const api = loadDriver();
    return api;
}

void DriverApi::check(CUresult status, char const* call) const
{
    if (status == CUDA_SUCCESS)
    {
        return;
    }
    char const* message = nullptr;
    if (getErrorString == nullptr || getErrorString(status, &message) != CUDA_SUCCESS || message == nullptr)
    {
        message = "unknown error";
    }
    throw std::runtime_error(std::string("CUDA driver error ") + std::to_string(static_cast<int>(status)) + " ("
        + message + ") in " + call);
}

} // namespace kiln::gpu
