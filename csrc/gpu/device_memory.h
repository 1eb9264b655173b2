#pragma once

#include "gpu/cuda_check.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

namespace kiln::gpu
{

/// @brief Owns one cudaMalloc'd (Device) or cudaMallocHost'd (Pinned) allocation.
template <bool Pinned>
class Allocation
{
public:
    Allocation() = default;
    explicit Allocation(std::size_t bytes)
        : mBytes(bytes)
    {
        if (bytes == 0)
        {
            return;
        }
        if constexpr (Pinned)
        {
            KILN_CUDA_CHECK(cudaMallocHost(&mPtr, bytes));
        }
        else
        {
            KILN_CUDA_CHECK(cudaMalloc(&mPtr, bytes));
        }
    }
    ~Allocation()
    {
        release();
    }
    Allocation(Allocation const&) = delete;
    Allocation& operator=(Allocation const&) = delete;
    Allocation(Allocation&& other) noexcept
        : mPtr(std::exchange(other.mPtr, nullptr))
        , mBytes(std::exchange(other.mBytes, 0))
    {
    }
    Allocation& operator=(Allocation&& other) noexcept
    {
        if (this != &other)
        {
            release();
            mPtr = std::exchange(other.mPtr, nullptr);
            mBytes = std::exchange(other.mBytes, 0);
        }
        return *this;
    }

    template <typename T>
    [[nodiscard]] T* get() const
    {
        return static_cast<T*>(mPtr);
    }
    [[nodiscard]] CUdeviceptr address() const
    {
        return reinterpret_cast<CUdeviceptr>(mPtr);
    }
    [[nodiscard]] std::size_t size() const
    {
        return mBytes;
    }

private:
    void release() noexcept
    {
        if (mPtr == nullptr)
        {
            return;
        }
        if constexpr (Pinned)
        {
            cudaFreeHost(mPtr);
        }
        else
        {
            cudaFree(mPtr);
        }
        mPtr = nullptr;
    }

    void* mPtr = nullptr;
    std::size_t mBytes = 0;
};

using DeviceMemory = Allocation<false>;
using PinnedMemory = Allocation<true>;

} // namespace kiln::gpu
