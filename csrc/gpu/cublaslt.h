#pragma once

#include <cublasLt.h>

#include <string>

namespace kiln::gpu
{

/// @brief The cuBLASLt functions the GEMM runner uses, from a library opened with dlopen at
/// run time (libcublasLt is not a link dependency of kiln._core).
class CublasLtApi
{
public:
    /// @brief Opens $KILN_CUBLASLT_LIBRARY when set, else libcublasLt.so.13 / .so.12 / .so
    /// from the loader's search path (or already loaded), else `fallback`. Throws
    /// std::runtime_error listing the tries.
    explicit CublasLtApi(std::string const& fallback = "");
    ~CublasLtApi();

    CublasLtApi(CublasLtApi const&) = delete;
    CublasLtApi& operator=(CublasLtApi const&) = delete;
    CublasLtApi(CublasLtApi&&) = delete;
    CublasLtApi& operator=(CublasLtApi&&) = delete;

    /// @brief The file that was opened.
    [[nodiscard]] std::string const& path() const
    {
        return mPath;
    }

    /// @brief Throws std::runtime_error naming `call` unless CUBLAS_STATUS_SUCCESS.
    void check(cublasStatus_t status, char const* call) const;

    decltype(&cublasLtCreate) create = nullptr;
    decltype(&cublasLtDestroy) destroy = nullptr;
    decltype(&cublasLtGetVersion) getVersion = nullptr;
    decltype(&cublasLtMatmulDescCreate) matmulDescCreate = nullptr;
    decltype(&cublasLtMatmulDescDestroy) matmulDescDestroy = nullptr;
    decltype(&cublasLtMatmulDescSetAttribute) matmulDescSetAttribute = nullptr;
    decltype(&cublasLtMatrixLayoutCreate) matrixLayoutCreate = nullptr;
    decltype(&cublasLtMatrixLayoutDestroy) matrixLayoutDestroy = nullptr;
    decltype(&cublasLtMatmulPreferenceCreate) preferenceCreate = nullptr;
    decltype(&cublasLtMatmulPreferenceDestroy) preferenceDestroy = nullptr;
    decltype(&cublasLtMatmulPreferenceSetAttribute) preferenceSetAttribute = nullptr;
    decltype(&cublasLtMatmulAlgoGetHeuristic) algoGetHeuristic = nullptr;
    decltype(&cublasLtMatmul) matmul = nullptr;

private:
    void* mHandle = nullptr;
    std::string mPath;
};

} // namespace kiln::gpu
