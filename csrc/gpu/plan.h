#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kiln::gpu
{

/// @brief A buffer a program argument points into (see kiln.builder.kernels.spec).
struct BufferRef
{
    enum class Kind
    {
        Arena,   ///< activation arena + offset
        Input,   ///< a step input, by name
        Weight,  ///< a weight, by name
        Kv,      ///< K (half 0) or V (half 1) of one layer of the paged cache
        Scratch, ///< a named scratch buffer + offset
        Const,   ///< a small uploaded table, by name
    };
    Kind kind = Kind::Arena;
    std::int64_t offset = 0;
    std::string name;
    int layer = 0;
    int half = 0;
};

/// @brief One runtime parameter of a kernel launch.
struct KernelArg
{
    enum class Kind
    {
        Pointer,
        Int32,
        Float32
    };
    Kind kind = Kind::Pointer;
    BufferRef ref;
    std::string expr; ///< Int32: an expression over the step's symbols
    float value = 0;  ///< Float32
};

/// @brief A kernel compiled for one SM.
struct KernelBinary
{
    std::string name;                ///< entry symbol
    std::string cubin;               ///< ELF bytes
    int numWarps = 4;
    int sharedBytes = 0;
    std::vector<std::string> params; ///< PTX parameter types ("u64", "u32", "f32"), scratch included
    int numExtraParams = 0;          ///< trailing scratch pointers Triton adds: null but the global scratch
    bool pdl = false;                ///< waits on its predecessor first: may launch programmatically
    /// Bytes of Triton's global scratch each program uses (TMA descriptors made in the kernel):
    /// the first trailing pointer, to grid programs x this many bytes; 0: none.
    std::int64_t globalScratchBytes = 0;
};

/// @brief A kernel specialization with its binaries, keyed by SM (80, 89, 90, ...).
struct KernelDesc
{
    std::map<int, KernelBinary> bySm;
    /// The oldest SM it has binaries for (a Hopper kernel: 90), 0: every target. On an older GPU
    /// it is not loaded, and the GEMM alternatives that launch it are left out.
    int minSm = 0;
};

struct LaunchStep
{
    std::string label;
    std::string kernel;
    std::array<std::string, 3> grid;
    std::vector<KernelArg> args;
    std::string when; ///< empty: always
    /// The scratch buffer given as the kernel's global scratch (KernelBinary::globalScratchBytes).
    std::string globalScratch;
};

/// @brief Launches that compute a GEMM's output for minM <= M <= maxM, in place of cuBLASLt. One
/// with minM > 1 (a GEMM for many rows) is chosen per band of M, not per M (PlanExecutor). From
/// preferredFromM rows (0: none) the engine prefers it to cuBLASLt: it runs untimed against
/// cuBLASLt there, where a run at the GPU's power limit measured it faster than the load's short
/// timings rank it (PlanExecutor::setKernelsFromRows overrides).
struct GemmAlternative
{
    int minM = 1;
    int maxM = 0;
    int preferredFromM = 0;
    std::vector<LaunchStep> steps;
};

/// @brief out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]), row-major; FP8: out = (a_scale * w_scale)
/// * (a @ w^T) (+ bias). The executor times the alternatives against cuBLASLt per M and runs
/// the fastest. `prologue` writes cuBLASLt's operands (a weight dequantized into scratch, or a
/// norm or SiLU-mul folded into the GEMM, which each alternative runs or computes itself): it
/// runs, and is timed, only with cuBLASLt; so does `epilogue`, after it (a gate/up GEMM's
/// SiLU-mul).
struct GemmStep
{
    std::string label;
    BufferRef a;
    BufferRef w;
    BufferRef out;
    std::optional<BufferRef> bias;
    std::string m;
    int n = 0;
    int k = 0;
    int lda = 0;
    int ldc = 0;
    std::string dtype;   ///< out's and bias's
    std::string inDtype; ///< a's and w's when they differ ("float8_e4m3fn"); empty: dtype
    std::optional<BufferRef> aScale; ///< FP8: float32 per-tensor dequantization scale of a
    std::optional<BufferRef> wScale; ///< FP8: the same for w
    /// A linear with a residual: out = (a @ w^T)(rounded) + residual, cuBLASLt's C with beta 1
    std::optional<BufferRef> residual;
    int ldr = 0; ///< the residual's row stride
    std::vector<GemmAlternative> alternatives;
    std::vector<LaunchStep> prologue;
    std::vector<LaunchStep> epilogue;
};

struct OutputSpec
{
    BufferRef ref;
    std::string rows;
    int cols = 0;
    std::string dtype;
};

/// @brief Where the plan's greedy pick over the logits leaves its results: int32 tokens
/// [capacity] then float32 log-probs [capacity], one of each per logits row.
struct SelectSpec
{
    BufferRef ref;
    int capacity = 0;
};

/// @brief Everything the plan executor runs, as compile_plan wrote it in the engine header's
/// "kernels" section (docs/architecture.md, "GPU plan executor").
struct PlanSpec
{
    std::string dtype;
    int maxNumTokens = 0;
    int maxBatchSize = 0;
    int maxSeqLen = 0;
    int maxBlocksPerSeq = 0;
    int tokensPerBlock = 0;
    std::int64_t arenaBytes = 0;
    int numLayers = 0;
    int numKvHeads = 0;
    int headDim = 0;
    std::string kvDtype;
    std::map<std::string, std::string> stepInputs; ///< name -> dtype
    OutputSpec logits;
    std::optional<SelectSpec> select; ///< absent in engines built before the greedy pick
    /// [symbol, kernel id]: how many programs of that kernel this GPU runs at once (its
    /// occupancy a multiprocessor times NSM), fixed at load; derived symbols may read them.
    std::vector<std::pair<std::string, std::string>> resident;
    std::vector<std::pair<std::string, std::string>> derived;
    std::map<std::string, std::vector<std::string>> scratch; ///< name -> size expressions (max wins)
    std::vector<std::string> zeroedScratch;                  ///< scratch that holds zeros at load
    std::map<std::string, std::vector<float>> constants;
    std::map<std::string, KernelDesc> kernels;
    std::vector<std::variant<LaunchStep, GemmStep>> program;
};

/// @brief A weight's bytes in host memory (e.g. the mmap'd engine file), valid during load.
struct WeightData
{
    std::string name;
    void const* data = nullptr;
    std::size_t nbytes = 0;
};

struct PlanExecutorOptions
{
    int device = 0;
    /// Fraction of the GPU memory still free after weights and activations that the KV cache takes.
    double kvCacheFreeGpuMemoryFraction = 0.9;
    /// Fixed KV block count instead of the fraction (tests).
    std::optional<int> numBlocks;
    /// libcublasLt to try after $KILN_CUBLASLT_LIBRARY and the loader's search (e.g. the
    /// nvidia-cublas wheel's copy); empty: none.
    std::string cublasLtPath;
    /// Run decode-only steps as CUDA graphs (one per batch bucket and launch shape, captured on
    /// first use); their batch is padded up to the bucket.
    bool cudaGraphs = true;
    /// Launch kernels compiled for it (KernelBinary::pdl) with programmatic stream
    /// serialization: each may start while the kernel before it finishes (SM 90 and newer).
    bool programmaticLaunch = true;
};

/// @brief Size of one element of `dtype` ("float32", "float16", "bfloat16", "int32", "int64").
[[nodiscard]] std::size_t dtypeSize(std::string const& dtype);

} // namespace kiln::gpu
