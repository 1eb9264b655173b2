#include "gpu/gemm.h"

#include "gpu/cuda_check.h"
#include "gpu/timing.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::gpu
{
namespace
{

std::string typeName(cudaDataType_t type)
{
    switch (type)
    {
    case CUDA_R_16BF: return "bfloat16";
    case CUDA_R_16F: return "float16";
    case CUDA_R_32F: return "float32";
    case CUDA_R_8F_E4M3: return "float8_e4m3fn";
    default: return "type" + std::to_string(static_cast<int>(type));
    }
}

/// The largest power of two (<= 256) that divides the address: cuBLASLt's heuristic assumes
/// 256-byte aligned operands unless told otherwise.
std::uint32_t alignment(void const* p)
{
    auto const address = reinterpret_cast<std::uintptr_t>(p);
    std::uint32_t align = 256;
    while (align > 1 && address % align != 0)
    {
        align /= 2;
    }
    return align;
}

constexpr int kCandidates = 8;
constexpr int kTuneMaxM = 64;
constexpr int kTuneReps = 3;

} // namespace

struct GemmRunner::Problem
{
    GemmProblem p;
    cublasLtMatmulDesc_t desc = nullptr;
    std::uint32_t alignA = 256; // the weight (cuBLASLt's A)
    std::uint32_t alignB = 256; // the activation (cuBLASLt's B)
    std::uint32_t alignC = 256;
    std::uint32_t alignR = 256; // the residual (cuBLASLt's C), where the problem has one
};

struct GemmRunner::Plan
{
    int m = 0;
    GemmProblem problem;                // the first of its shape (for reports)
    cublasLtMatrixLayout_t a = nullptr; // w: K x N column-major, transposed by the op
    cublasLtMatrixLayout_t b = nullptr; // activations: K x M column-major (ld = lda)
    cublasLtMatrixLayout_t c = nullptr; // out: N x M column-major (ld = ldc)
    cublasLtMatrixLayout_t r = nullptr; // the residual, cuBLASLt's C: N x M (ld = ldr); null: c
    std::vector<cublasLtMatmulHeuristicResult_t> candidates; // the heuristic's, best first
    std::size_t tunedOver = 0;          // how many GEMMs the candidates were timed over (0: not timed)
    cublasLtMatmulAlgo_t algo{};
    GemmChoice choice;
};

GemmRunner::GemmRunner(std::string const& cublasLtPath, std::size_t workspaceBytes)
    : mApi(std::make_unique<CublasLtApi>(cublasLtPath))
    , mWorkspaceBytes(workspaceBytes)
{
    mApi->check(mApi->create(&mHandle), "cublasLtCreate");
    if (mWorkspaceBytes > 0)
    {
        KILN_CUDA_CHECK(cudaMalloc(&mWorkspace, mWorkspaceBytes));
    }
}

GemmRunner::~GemmRunner()
{
    destroyPlans();
    for (auto& problem : mProblems)
    {
        mApi->matmulDescDestroy(problem->desc);
    }
    if (mWorkspace != nullptr)
    {
        cudaFree(mWorkspace);
    }
    if (mHandle != nullptr)
    {
        mApi->destroy(mHandle);
    }
}

int GemmRunner::add(GemmProblem const& p)
{
    auto problem = std::make_unique<Problem>();
    problem->p = p;
    problem->alignA = alignment(p.w);
    problem->alignB = alignment(p.a);
    problem->alignC = alignment(p.out);
    if (p.residual != nullptr)
    {
        if (p.ldr < p.n)
            throw std::invalid_argument("a GEMM's residual needs a row stride of at least N");
        problem->alignR = alignment(p.residual);
    }
    auto& api = *mApi;
    api.check(api.matmulDescCreate(&problem->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    cublasOperation_t const transA = CUBLAS_OP_T;
    cublasOperation_t const transB = CUBLAS_OP_N;
    api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transA, sizeof(transA)),
        "cublasLtMatmulDescSetAttribute(TRANSA)");
    api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_TRANSB, &transB, sizeof(transB)),
        "cublasLtMatmulDescSetAttribute(TRANSB)");
    if (p.inType != p.type)
    {
        // FP8 (Hopper/Ada): D = alpha * (scaleA * A) @ (scaleB * B); cuBLASLt's A is our w.
        if (p.aScale == nullptr || p.wScale == nullptr)
            throw std::invalid_argument("an FP8 GEMM needs the scales of a and w");
        api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.wScale, sizeof(p.wScale)),
            "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
        api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p.aScale, sizeof(p.aScale)),
            "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
        applyFastAccumulation(*problem);
    }
    if (p.bias != nullptr)
    {
        cublasLtEpilogue_t const epilogue = CUBLASLT_EPILOGUE_BIAS;
        api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
            "cublasLtMatmulDescSetAttribute(EPILOGUE)");
        api.check(api.matmulDescSetAttribute(problem->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)),
            "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        api.check(api.matmulDescSetAttribute(
                      problem->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &problem->p.type, sizeof(problem->p.type)),
            "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
    }
    mProblems.push_back(std::move(problem));
    return static_cast<int>(mProblems.size()) - 1;
}

void GemmRunner::applyFastAccumulation(Problem& problem)
{
    std::int8_t const fast = mFp8FastAccumulation ? 1 : 0;
    mApi->check(mApi->matmulDescSetAttribute(problem.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
        "cublasLtMatmulDescSetAttribute(FAST_ACCUM)");
}

void GemmRunner::destroyPlans() noexcept
{
    for (auto& [key, plan] : mPlans)
    {
        mApi->matrixLayoutDestroy(plan->a);
        mApi->matrixLayoutDestroy(plan->b);
        mApi->matrixLayoutDestroy(plan->c);
        if (plan->r != nullptr)
            mApi->matrixLayoutDestroy(plan->r);
    }
    mPlans.clear();
}

void GemmRunner::setFp8FastAccumulation(bool on)
{
    if (on == mFp8FastAccumulation)
        return;
    mFp8FastAccumulation = on;
    for (auto& problem : mProblems)
    {
        if (problem->p.inType != problem->p.type)
            applyFastAccumulation(*problem);
    }
    destroyPlans();
}

bool GemmRunner::fp8FastAccumulation() const
{
    return mFp8FastAccumulation;
}

GemmRunner::PlanKey GemmRunner::keyOf(Problem const& problem, int m)
{
    GemmProblem const& p = problem.p;
    return std::make_tuple(static_cast<int>(p.type) * 1000 + static_cast<int>(p.inType), p.n, p.k, p.lda, p.ldc,
        p.bias != nullptr, m,
        static_cast<int>(problem.alignA * 1000 + problem.alignB * 10 + (problem.alignC >= 16)),
        p.residual != nullptr ? p.ldr * 2 + (problem.alignR >= 16) : -1);
}

GemmRunner::Plan& GemmRunner::planFor(
    std::vector<Problem const*> const& peers, int m, cudaStream_t stream, ColdL2 const* cold)
{
    auto const key = keyOf(*peers.front(), m);
    auto it = mPlans.find(key);
    if (it == mPlans.end())
        it = mPlans.emplace(key, makePlan(*peers.front(), m)).first;
    Plan& plan = *it->second;
    if (plan.candidates.size() < 2 || m > kTuneMaxM)
        return plan;
    std::vector<Problem const*> same;
    for (Problem const* peer : peers)
        if (keyOf(*peer, m) == key)
            same.push_back(peer);
    if (same.size() <= plan.tunedOver)
        return plan;
    // Time the candidates on the real operands (the outputs are rewritten by the real run); a
    // plan tuned on fewer GEMMs (one run before the step's choices) is tuned again.
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::optional<ColdL2> own;
    ColdL2 const& evict = cold != nullptr ? *cold : own.emplace();
    std::size_t best = 0;
    float bestUs = -1.0F;
    float firstUs = -1.0F;
    for (std::size_t i = 0; i < plan.candidates.size(); ++i)
    {
        auto const& candidate = plan.candidates[i];
        if (candidate.state != CUBLAS_STATUS_SUCCESS || candidate.workspaceSize > mWorkspaceBytes)
            continue;
        float const us = timeAlgo(same, plan, candidate.algo, stream, evict);
        if (i == 0)
            firstUs = us;
        if (us >= 0 && (bestUs < 0 || us < bestUs))
        {
            bestUs = us;
            best = i;
        }
    }
    plan.tunedOver = same.size();
    choose(plan, best,
        "timed " + std::to_string(plan.candidates.size()) + " candidates over " + std::to_string(same.size())
            + " GEMMs: #" + std::to_string(best) + " " + std::to_string(static_cast<int>(bestUs + 0.5F))
            + " us a GEMM (first " + std::to_string(static_cast<int>(firstUs + 0.5F)) + " us)");
    return plan;
}

std::unique_ptr<GemmRunner::Plan> GemmRunner::makePlan(Problem const& problem, int m)
{
    GemmProblem const& p = problem.p;
    auto& api = *mApi;
    auto plan = std::make_unique<Plan>();
    plan->m = m;
    plan->problem = p;
    api.check(api.matrixLayoutCreate(&plan->a, p.inType, p.k, p.n, p.k), "cublasLtMatrixLayoutCreate(w)");
    api.check(api.matrixLayoutCreate(&plan->b, p.inType, p.k, m, p.lda), "cublasLtMatrixLayoutCreate(a)");
    api.check(api.matrixLayoutCreate(&plan->c, p.type, p.n, m, p.ldc), "cublasLtMatrixLayoutCreate(out)");
    if (p.residual != nullptr)
        api.check(api.matrixLayoutCreate(&plan->r, p.type, p.n, m, p.ldr), "cublasLtMatrixLayoutCreate(residual)");
    cublasLtMatrixLayout_t const cLayout = plan->r != nullptr ? plan->r : plan->c;

    cublasLtMatmulPreference_t pref = nullptr;
    api.check(api.preferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    auto setPref = [&](cublasLtMatmulPreferenceAttributes_t attr, auto value, char const* what)
    {
        api.check(api.preferenceSetAttribute(pref, attr, &value, sizeof(value)), what);
    };
    cublasLtMatmulHeuristicResult_t results[kCandidates]{};
    int found = 0;
    try
    {
        setPref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(mWorkspaceBytes),
            "preference MAX_WORKSPACE_BYTES");
        setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, problem.alignA, "preference MIN_ALIGNMENT_A");
        setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, problem.alignB, "preference MIN_ALIGNMENT_B");
        setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, p.residual != nullptr ? problem.alignR : problem.alignC,
            "preference MIN_ALIGNMENT_C");
        setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, problem.alignC, "preference MIN_ALIGNMENT_D");
        api.check(api.algoGetHeuristic(
                      mHandle, problem.desc, plan->a, plan->b, cLayout, plan->c, pref, kCandidates, results, &found),
            "cublasLtMatmulAlgoGetHeuristic");
    }
    catch (...)
    {
        api.preferenceDestroy(pref);
        throw;
    }
    api.preferenceDestroy(pref);
    if (found == 0)
    {
        throw std::runtime_error("cuBLASLt has no algorithm for a " + typeName(p.type) + " GEMM with M="
            + std::to_string(m) + " N=" + std::to_string(p.n) + " K=" + std::to_string(p.k));
    }
    plan->candidates.assign(results, results + found);
    choose(*plan, 0, "heuristic's first of " + std::to_string(found));
    return plan;
}

void GemmRunner::choose(Plan& plan, std::size_t candidate, std::string const& how)
{
    auto const& result = plan.candidates[candidate];
    GemmProblem const& p = plan.problem;
    plan.algo = result.algo;
    // The algo's opaque words hold its id first; tile and stage ids follow in later words.
    plan.choice = GemmChoice{plan.m, p.n, p.k,
        p.inType == p.type ? typeName(p.type) : typeName(p.inType) + "->" + typeName(p.type), p.bias != nullptr,
        "algo " + std::to_string(result.algo.data[0]) + " config " + std::to_string(result.algo.data[1]) + "/"
            + std::to_string(result.algo.data[2]) + " waves " + std::to_string(result.wavesCount) + "; " + how};
}

void GemmRunner::prepare(std::vector<int> const& ids, int m, cudaStream_t stream, ColdL2 const* cold)
{
    if (m <= 0 || ids.empty())
    {
        return;
    }
    std::vector<Problem const*> peers;
    peers.reserve(ids.size());
    for (int id : ids)
        peers.push_back(mProblems.at(static_cast<std::size_t>(id)).get());
    planFor(peers, m, stream, cold);
}

void GemmRunner::run(int id, int m, cudaStream_t stream)
{
    Problem const& problem = *mProblems.at(static_cast<std::size_t>(id));
    if (m <= 0)
    {
        return;
    }
    // A plan, once made, is tuned already (prepare() retunes it over more GEMMs, run() never).
    auto const known = mPlans.find(keyOf(problem, m));
    Plan& plan = known != mPlans.end() ? *known->second : planFor({&problem}, m, stream, nullptr);
    mApi->check(matmul(problem, plan, plan.algo, stream), "cublasLtMatmul");
}

float GemmRunner::timeAlgo(std::vector<Problem const*> const& peers, Plan const& plan,
    cublasLtMatmulAlgo_t const& algo, cudaStream_t stream, ColdL2 const& cold)
{
    auto once = [&](Problem const& problem) { return matmul(problem, plan, algo, stream); };
    if (once(*peers.front()) != CUBLAS_STATUS_SUCCESS) // a candidate that does not run is skipped
    {
        return -1.0F;
    }
    auto const all = [&]()
    {
        for (Problem const* peer : peers)
            mApi->check(once(*peer), "cublasLtMatmul (timing)");
    };
    return bestOfRuns(stream, kTuneReps, all, cold) / static_cast<float>(peers.size());
}

cublasStatus_t GemmRunner::matmul(
    Problem const& problem, Plan const& plan, cublasLtMatmulAlgo_t const& algo, cudaStream_t stream)
{
    // out = w^T-product (+ bias) (+ the residual: cuBLASLt's C with beta 1, its own layout).
    float const alpha = 1.0F;
    GemmProblem const& p = problem.p;
    bool const residual = p.residual != nullptr;
    float const beta = residual ? 1.0F : 0.0F;
    return mApi->matmul(mHandle, problem.desc, &alpha, p.w, plan.a, p.a, plan.b, &beta, residual ? p.residual : p.out,
        residual ? plan.r : plan.c, p.out, plan.c, &algo, mWorkspace, mWorkspaceBytes, stream);
}

std::vector<GemmChoice> GemmRunner::choices() const
{
    std::vector<GemmChoice> out;
    for (auto const& [key, plan] : mPlans)
    {
        out.push_back(plan->choice);
    }
    return out;
}

std::string GemmRunner::describe() const
{
    return "cuBLASLt " + std::to_string(mApi->getVersion()) + " (" + mApi->path() + ")";
}

} // namespace kiln::gpu
