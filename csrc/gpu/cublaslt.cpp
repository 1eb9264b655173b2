#include "gpu/cublaslt.h"

#include <dlfcn.h>

#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace kiln::gpu
{
namespace
{

template <typename Fn>
void bind(void* handle, Fn& fn, char const* symbol, std::string const& path)
{
    fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
    if (fn == nullptr)
    {
        throw std::runtime_error(path + " has no " + symbol + ": it is not a usable cuBLASLt (need CUDA 12 or 13)");
    }
}

} // namespace

CublasLtApi::CublasLtApi(std::string const& fallback)
{
    std::vector<std::string> tries;
    if (char const* env = std::getenv("KILN_CUBLASLT_LIBRARY"); env != nullptr && *env != '\0')
    {
        tries.emplace_back(env);
    }
    else
    {
        tries.insert(tries.end(), {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
        if (!fallback.empty())
        {
            tries.push_back(fallback);
        }
    }
    std::string errors;
    for (auto const& name : tries)
    {
        mHandle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (mHandle != nullptr)
        {
            mPath = name;
            break;
        }
        char const* error = dlerror();
        errors += (errors.empty() ? "" : "; ") + std::string(error != nullptr ? error : name.c_str());
    }
    if (mHandle == nullptr)
    {
        throw std::runtime_error("cannot open cuBLASLt (" + errors
            + "): install nvidia-cublas or set KILN_CUBLASLT_LIBRARY to libcublasLt.so's path");
    }
    try
    {
        bind(mHandle, create, "cublasLtCreate", mPath);
        bind(mHandle, destroy, "cublasLtDestroy", mPath);
        bind(mHandle, getVersion, "cublasLtGetVersion", mPath);
        bind(mHandle, matmulDescCreate, "cublasLtMatmulDescCreate", mPath);
        bind(mHandle, matmulDescDestroy, "cublasLtMatmulDescDestroy", mPath);
        bind(mHandle, matmulDescSetAttribute, "cublasLtMatmulDescSetAttribute", mPath);
        bind(mHandle, matrixLayoutCreate, "cublasLtMatrixLayoutCreate", mPath);
        bind(mHandle, matrixLayoutDestroy, "cublasLtMatrixLayoutDestroy", mPath);
        bind(mHandle, preferenceCreate, "cublasLtMatmulPreferenceCreate", mPath);
        bind(mHandle, preferenceDestroy, "cublasLtMatmulPreferenceDestroy", mPath);
        bind(mHandle, preferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute", mPath);
        bind(mHandle, algoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic", mPath);
        bind(mHandle, matmul, "cublasLtMatmul", mPath);
    }
    catch (...)
    {
        dlclose(mHandle);
        throw;
    }
}

CublasLtApi::~CublasLtApi()
{
    if (mHandle != nullptr)
    {
        dlclose(mHandle);
    }
}

void CublasLtApi::check(cublasStatus_t status, char const* call) const
{
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        throw std::runtime_error(std::string("cuBLASLt error ") + std::to_string(static_cast<int>(status)) + " in "
            + call);
    }
}

} // namespace kiln::gpu
