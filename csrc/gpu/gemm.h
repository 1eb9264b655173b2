#pragma once

#include "gpu/cublaslt.h"
#include "gpu/timing.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace kiln::gpu
{

/// @brief One GEMM of a plan: out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]), row-major, with
/// fixed buffers and a per-step M.
struct GemmProblem
{
    cudaDataType_t type = CUDA_R_16BF;   ///< out and bias
    cudaDataType_t inType = CUDA_R_16BF; ///< a and w (CUDA_R_8F_E4M3 with the scales below)
    int n = 0;
    int k = 0;
    int lda = 0;
    int ldc = 0;
    void const* a = nullptr;
    void const* w = nullptr;
    void* out = nullptr;
    void const* bias = nullptr;
    void const* aScale = nullptr; ///< device float32: a's per-tensor dequantization scale (FP8)
    void const* wScale = nullptr; ///< device float32: w's
};

/// @brief The algorithm cuBLASLt's heuristic chose for one shape and M, for reports.
struct GemmChoice
{
    int m = 0;
    int n = 0;
    int k = 0;
    std::string dtype;
    bool bias = false;
    std::string algorithm; ///< the algo's id, tile, stages and split-K as cuBLASLt reports them
};

/// @brief Runs a plan's GEMMs through cuBLASLt. Row-major out = a @ w^T is computed as the
/// column-major out^T[N, M] = w[K, N]^T @ a^T[K, M] (w transposed, a as is). The algorithm for
/// each (shape, M) is chosen on first use and kept: cublasLtMatmulAlgoGetHeuristic's candidates,
/// timed on the GPU for small M (decode-sized GEMMs, where the heuristic's first pick can leave
/// half the GPU idle), its first pick otherwise.
class GemmRunner
{
public:
    GemmRunner(std::string const& cublasLtPath, std::size_t workspaceBytes);
    ~GemmRunner();

    GemmRunner(GemmRunner const&) = delete;
    GemmRunner& operator=(GemmRunner const&) = delete;
    GemmRunner(GemmRunner&&) = delete;
    GemmRunner& operator=(GemmRunner&&) = delete;

    /// @brief Registers a problem; returns its id for run().
    [[nodiscard]] int add(GemmProblem const& problem);
    /// @brief Enqueues problem `id` with M rows on `stream`.
    void run(int id, int m, cudaStream_t stream);
    /// @brief Picks (and, for small M, times) the algorithm for problem `id` at `m` rows now, so
    /// a later run() does nothing but launch (as a CUDA graph capture needs).
    void prepare(int id, int m, cudaStream_t stream);
    /// @brief Microseconds problem `id` takes at `m` rows with its chosen algorithm (the best of
    /// a few runs, each after `cold` evicts L2; the output is overwritten), to weigh it against
    /// other kernels.
    [[nodiscard]] float time(int id, int m, cudaStream_t stream, ColdL2 const& cold);
    /// @brief Every (shape, M) chosen so far.
    [[nodiscard]] std::vector<GemmChoice> choices() const;
    /// @brief cuBLASLt's version number and library path.
    [[nodiscard]] std::string describe() const;

private:
    struct Plan;
    struct Problem;
    /// `cold`: evicts L2 before each timed run when the algorithm is tuned (made here when null).
    Plan& planFor(Problem const& problem, int m, cudaStream_t stream, ColdL2 const* cold = nullptr);
    float timeAlgo(Problem const& problem, Plan const& plan, cublasLtMatmulAlgo_t const& algo, cudaStream_t stream,
        ColdL2 const& cold);

    std::unique_ptr<CublasLtApi> mApi;
    cublasLtHandle_t mHandle = nullptr;
    void* mWorkspace = nullptr;
    std::size_t mWorkspaceBytes = 0;
    std::vector<std::unique_ptr<Problem>> mProblems;
    std::map<std::tuple<int, int, int, int, int, bool, int, int>, std::unique_ptr<Plan>> mPlans;
};

} // namespace kiln::gpu
