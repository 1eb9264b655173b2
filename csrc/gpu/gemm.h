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
    void const* residual = nullptr; ///< added to the product (cuBLASLt's C, beta 1); null: none
    int ldr = 0;                    ///< the residual's row stride
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
/// half the GPU idle), its first pick otherwise. A candidate is timed over every GEMM of the
/// shape it is given, back to back, as a step runs them (each reads its own weight from memory).
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
    /// @brief Picks (and, for small M, times) the algorithm for the shape of problems `ids` at
    /// `m` rows now, so a later run() of any of them does nothing but launch (as a CUDA graph
    /// capture needs). Each candidate is timed over those of `ids` that share the first's shape
    /// and alignment, back to back (their outputs are overwritten), after `cold` evicts L2
    /// (made here when null).
    void prepare(std::vector<int> const& ids, int m, cudaStream_t stream, ColdL2 const* cold = nullptr);
    /// @brief FP8 GEMMs accumulate as the tensor cores do, without promoting their partial
    /// sums to float32 along K (cuBLASLt's FAST_ACCUM; CUTLASS's FP8FastAccum schedules). A
    /// change forgets every (shape, M) choice: the algorithms differ between the two.
    void setFp8FastAccumulation(bool on);
    [[nodiscard]] bool fp8FastAccumulation() const;
    /// @brief Every (shape, M) chosen so far.
    [[nodiscard]] std::vector<GemmChoice> choices() const;
    /// @brief cuBLASLt's version number and library path.
    [[nodiscard]] std::string describe() const;

private:
    struct Plan;
    struct Problem;
    using PlanKey = std::tuple<int, int, int, int, int, bool, int, int, int>;
    static PlanKey keyOf(Problem const& problem, int m);
    /// The plan of peers[0]'s shape at `m` rows. For small M its candidates are timed, each
    /// over those of `peers` of that shape back to back after `cold` evicts L2 (made here when
    /// null): when the plan is new, and again when more such GEMMs are given than last time.
    Plan& planFor(std::vector<Problem const*> const& peers, int m, cudaStream_t stream, ColdL2 const* cold);
    /// A plan with the heuristic's candidates for `problem`'s shape at `m` rows, its first chosen.
    std::unique_ptr<Plan> makePlan(Problem const& problem, int m);
    /// Makes the plan's `candidate` its algorithm; `how` says how it was picked (for reports).
    static void choose(Plan& plan, std::size_t candidate, std::string const& how);
    float timeAlgo(std::vector<Problem const*> const& peers, Plan const& plan, cublasLtMatmulAlgo_t const& algo,
        cudaStream_t stream, ColdL2 const& cold);
    /// Sets FAST_ACCUM on an FP8 problem's descriptor as mFp8FastAccumulation says.
    void applyFastAccumulation(Problem& problem);
    /// @brief One cublasLtMatmul of `problem` with `plan`'s layouts and `algo` on `stream`.
    cublasStatus_t matmul(Problem const& problem, Plan const& plan, cublasLtMatmulAlgo_t const& algo,
        cudaStream_t stream);
    void destroyPlans() noexcept;

    std::unique_ptr<CublasLtApi> mApi;
    cublasLtHandle_t mHandle = nullptr;
    void* mWorkspace = nullptr;
    std::size_t mWorkspaceBytes = 0;
    bool mFp8FastAccumulation = false;
    std::vector<std::unique_ptr<Problem>> mProblems;
    std::map<PlanKey, std::unique_ptr<Plan>> mPlans;
};

} // namespace kiln::gpu
