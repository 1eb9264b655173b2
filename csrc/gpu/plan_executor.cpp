#include "gpu/plan_executor.h"

#include "gpu/cuda_check.h"
#include "gpu/device_memory.h"
#include "gpu/driver.h"
#include "gpu/expr.h"
#include "gpu/timing.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <variant>

namespace kiln::gpu
{
namespace
{

constexpr std::size_t kAlign = 256;
constexpr std::size_t kWorkspaceBytes = 32U << 20U; // cuBLASLt's advice for Hopper
constexpr std::size_t kMaxGraphs = 256;                // past it, new launch shapes run eagerly
constexpr unsigned kCopyThreads = 8;    // uploadWeights: threads copying into pinned staging
constexpr std::int64_t kAheadRows = 256;   // prepareGemmsAhead: a step's rows every this many
constexpr std::int64_t kAheadMinRows = 64; // prepareGemmsAhead: GEMMs of more rows (GemmRunner times fewer)
constexpr std::size_t kTimedGemms = 8; // GEMMs of one shape a candidate is timed over, back to back
/// std::memcpy of `n` bytes on up to kCopyThreads threads (the caller's among them), in slices
/// of at least 8 MiB: one core copies from a memory-mapped file at a fraction of what a PCIe 5
/// link takes.
void copyOnThreads(char* to, char const* from, std::size_t n)
{
    constexpr std::size_t kMinSlice = 8U << 20U;
    std::size_t const slices = std::min<std::size_t>(
        {kCopyThreads, std::max(1U, std::thread::hardware_concurrency()), (n + kMinSlice - 1) / kMinSlice});
    std::size_t const slice = slices == 0 ? n : (n + slices - 1) / slices;
    std::vector<std::thread> threads;
    try
    {
        for (std::size_t at = slice; at < n; at += slice)
            threads.emplace_back([=] { std::memcpy(to + at, from + at, std::min(slice, n - at)); });
    }
    catch (...)
    {
        for (auto& t : threads)
            t.join();
        throw;
    }
    std::memcpy(to, from, std::min(slice, n));
    for (auto& t : threads)
        t.join();
}

/// Restores the step values it was given when it goes out of scope (the load-time preparations
/// set their own, then leave those of the last step as they were).
class ValuesRestored
{
public:
    explicit ValuesRestored(std::vector<std::int64_t>& values)
        : mValues(values)
        , mSaved(values)
    {
    }

    ValuesRestored(ValuesRestored const&) = delete;
    ValuesRestored& operator=(ValuesRestored const&) = delete;

    ~ValuesRestored()
    {
        mValues = mSaved;
    }

private:
    std::vector<std::int64_t>& mValues;
    std::vector<std::int64_t> const mSaved;
};

// BD: how many sequences, from the first, have one query token each (the step's decodes).
// LOGITS: 1 when the step's float32 logits are copied back (some row asked for), else 0.
constexpr char const* kStepSymbols[] = {"T", "B", "MAXCTX", "MAXQ", "MAXBLK", "NSM", "BD", "LOGITS"};
enum StepSymbol
{
    kT,
    kB,
    kMaxCtx,
    kMaxQ,
    kMaxBlk,
    kNsm,
    kBd,
    kLogits
};

std::size_t alignUp(std::size_t n)
{
    return (n + kAlign - 1) / kAlign * kAlign;
}

std::string gib(std::size_t bytes)
{
    std::ostringstream out;
    out.precision(2);
    out << std::fixed << static_cast<double>(bytes) / (1ULL << 30U) << " GiB";
    return out.str();
}

cudaDataType_t cudaType(std::string const& dtype)
{
    if (dtype == "bfloat16")
    {
        return CUDA_R_16BF;
    }
    if (dtype == "float16")
    {
        return CUDA_R_16F;
    }
    if (dtype == "float32")
    {
        return CUDA_R_32F;
    }
    throw std::invalid_argument("GEMMs in " + dtype + " are not supported");
}

struct ResolvedKernel
{
    CUfunction function = nullptr;
    KernelBinary const* binary = nullptr;
};

struct ResolvedLaunch
{
    std::string label;
    CUfunction function = nullptr;
    unsigned threads = 0;
    unsigned shared = 0;
    bool pdl = false;
    Expr grid[3];
    std::optional<Expr> when;
    std::vector<std::pair<std::size_t, Expr>> intArgs; // slot index, expression
    std::vector<std::uint64_t> slots;                  // one 8-byte slot per parameter
    std::vector<void*> params;
    std::int64_t scratchPerProgram = 0; // Triton's global scratch: bytes a program (0: none)
    std::int64_t scratchCapacity = 0;   // and the bytes of the buffer it is given
};

struct ResolvedAlternative
{
    int minM = 1;
    int maxM = 0;
    int preferredFromM = 0; ///< GemmAlternative::preferredFromM
    std::vector<ResolvedLaunch> steps;
};

struct ResolvedGemm
{
    std::string label;
    int id = 0;
    Expr m;
    int n = 0;
    int k = 0;
    int shape = 0; ///< GEMMs of equal shape (and alternatives) share their choices
    int maxM = 0;  ///< the most rows any alternative takes (0: none)
    int bandFrom = 0; ///< the fewest rows an alternative for many rows takes (0: none): chosen per band
    std::vector<ResolvedAlternative> alternatives;
    std::vector<ResolvedLaunch> prologue; ///< runs before cuBLASLt only
    std::vector<ResolvedLaunch> epilogue; ///< runs after cuBLASLt only
    std::optional<std::size_t> before;    ///< the program's item right before it

    /// Whether an alternative for many rows takes `m`: its choice is made per band of M.
    [[nodiscard]] bool banded(std::int64_t m) const
    {
        return bandFrom > 0 && m >= bandFrom && m <= maxM;
    }
};

/// The step inputs' host fields, by ABI name.
std::pair<void const*, std::size_t> hostInput(StepInputs const& s, std::string const& name)
{
    auto bytes = [](auto const& v) { return std::make_pair(static_cast<void const*>(v.data()), v.size() * sizeof(v[0])); };
    if (name == "input_ids")
        return bytes(s.inputIds);
    if (name == "positions")
        return bytes(s.positions);
    if (name == "slot_mapping")
        return bytes(s.slotMapping);
    if (name == "block_tables")
        return bytes(s.blockTables);
    if (name == "context_lens")
        return bytes(s.contextLens);
    if (name == "query_start")
        return bytes(s.queryStart);
    if (name == "last_token_index")
        return bytes(s.lastTokenIndex);
    throw std::invalid_argument("the plan reads step input '" + name + "', which the runtime does not provide");
}

} // namespace

std::size_t dtypeSize(std::string const& dtype)
{
    if (dtype == "float32" || dtype == "int32")
        return 4;
    if (dtype == "float16" || dtype == "bfloat16")
        return 2;
    if (dtype == "int64")
        return 8;
    if (dtype == "int8" || dtype == "uint8" || dtype == "float8_e4m3fn")
        return 1;
    throw std::invalid_argument("unknown dtype '" + dtype + "'");
}

class PlanExecutor::Impl
{
public:
    Impl(PlanSpec plan, std::vector<WeightData> const& weights, PlanExecutorOptions const& options)
        : mSpec(std::move(plan))
        , mDevice(options.device)
        , mDriver(DriverApi::get())
        , mCudaGraphs(options.cudaGraphs)
        , mProgrammaticLaunch(options.programmaticLaunch)
    {
        KILN_CUDA_CHECK(cudaSetDevice(mDevice));
        KILN_CUDA_CHECK(cudaGetDeviceProperties(&mProps, mDevice));
        mSm = mProps.major * 10 + mProps.minor;
        for (char const* name : kStepSymbols)
        {
            mSymbols.add(name);
        }
        for (auto const& [name, kernel] : mSpec.resident)
        {
            if (mSymbols.find(name) >= 0)
                throw std::invalid_argument("engine plan names symbol '" + name
                    + "' twice: the engine is damaged; rebuild it with engine-build");
            mSymbols.add(name);
        }
        for (auto const& [name, formula] : mSpec.derived)
        {
            mDerived.push_back(Expr::parse(formula, mSymbols));
            mSymbols.add(name);
        }
        mValues.assign(mSymbols.size(), 0);
        mValues[kNsm] = mProps.multiProcessorCount;

        try
        {
            loadKernels();
            countResident();
            allocate(weights, options);
            resolveProgram();
            KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&mStream, cudaStreamNonBlocking));
        }
        catch (...)
        {
            unload();
            throw;
        }
    }

    ~Impl()
    {
        cudaSetDevice(mDevice);
        if (mStream != nullptr)
        {
            cudaStreamSynchronize(mStream);
            cudaStreamDestroy(mStream);
        }
        unload();
    }

    int numBlocks() const
    {
        return mNumBlocks;
    }

    StepOutput forward(StepInputs const& step)
    {
        start(step, [] {});
        return finish();
    }

    /// Queues `step`'s work on the stream, calling `beside` once the GPU has work to run while the
    /// caller does its own (after a graph's launch, or a step's first GEMM launched kernel by
    /// kernel: the rest of its launches may wait on the stream's queue as long as the GPU takes);
    /// finish() waits for it. `step` must live until then.
    void start(StepInputs const& step, std::function<void()> const& beside)
    {
        if (mStarted != nullptr)
            throw std::logic_error("PlanExecutor::start: the step before was not finished");
        mMark = Clock::now();
        KILN_CUDA_CHECK(cudaSetDevice(mDevice));
        validate(step);
        // collect() copies every row's logits back unless the plan picks and the caller named rows.
        mValues[kLogits] = mSelect == 0 || !step.logitRows.has_value() || !step.logitRows->empty() ? 1 : 0;
        // A decode-only step (one token per sequence) runs as a CUDA graph, its batch padded up
        // to a bucket so few graphs serve every batch size.
        bool const graph = mCudaGraphs && mValues[kMaxQ] == 1 && mValues[kT] == mValues[kB];
        StepInputs const* inputs = &step;
        if (graph)
        {
            std::int64_t const bucket = batchBucket(mValues[kB]);
            if (bucket != mValues[kB])
            {
                pad(step, bucket);
                inputs = &mPadded;
                mValues[kT] = bucket;
                mValues[kB] = bucket;
                mValues[kBd] = bucket;
            }
        }
        evalDerived();
        StepHostTimes& host = graph ? mHostGraphed : mHostEager;
        ++host.steps;
        lap(host.prepareMicros);
        upload(*inputs);
        lap(host.uploadMicros);
        bool besideDone = false;
        auto const besideNow = [&]
        {
            if (besideDone)
                return;
            besideDone = true;
            lap(host.launchMicros);
            beside();
            lap(host.besideMicros);
        };
        if (graph)
        {
            runGraph();
        }
        else
        {
            prepareGemms();
            lap(host.chooseMicros);
            runProgram(besideNow);
            ++mGraphStats.eagerSteps;
        }
        besideNow();
        lap(host.launchMicros);
        mStarted = &step;
        mStartedHost = &host;
    }

    /// The output of the step start() queued, once the stream has run it.
    StepOutput finish()
    {
        if (mStarted == nullptr)
            throw std::logic_error("PlanExecutor::finish: no step was started");
        StepInputs const& step = *std::exchange(mStarted, nullptr);
        StepHostTimes& host = *mStartedHost;
        mMark = Clock::now();
        StepOutput out = collect(step, [&] { lap(host.waitMicros); });
        lap(host.finishMicros);
        return out;
    }

    /// Adds the time since the last lap to `micros`.
    void lap(double& micros)
    {
        auto const now = Clock::now();
        micros += std::chrono::duration<double, std::micro>(now - mMark).count();
        mMark = now;
    }

    std::pair<StepHostTimes, StepHostTimes> hostTimes() const
    {
        return {mHostEager, mHostGraphed};
    }

    void setCudaGraphs(bool on)
    {
        mCudaGraphs = on;
    }

    bool cudaGraphs() const
    {
        return mCudaGraphs;
    }

    void setProgrammaticLaunch(bool on)
    {
        if (on == mProgrammaticLaunch)
            return;
        KILN_CUDA_CHECK(cudaStreamSynchronize(mStream));
        dropGraphs();
        mProgrammaticLaunch = on;
    }

    bool programmaticLaunch() const
    {
        return mProgrammaticLaunch;
    }

    /// Forgets the GEMM choices and the graphs captured with them, once the GPU is done with
    /// what was queued: for a setting that changes what a choice would be.
    void dropChoices()
    {
        KILN_CUDA_CHECK(cudaStreamSynchronize(mStream));
        dropGraphs();
        mChosen.clear();
        mBandChosen.clear();
        mAlternativeChoices.clear();
    }

    void setFp8FastAccumulation(bool on)
    {
        if (on == mGemm->fp8FastAccumulation())
            return;
        dropChoices();
        mGemm->setFp8FastAccumulation(on);
    }

    bool fp8FastAccumulation() const
    {
        return mGemm->fp8FastAccumulation();
    }

    void setKernelsFromRows(std::optional<std::int64_t> rows)
    {
        if (rows && *rows < 0)
            throw std::invalid_argument("kernels_from_rows must be None (the engine's preferences), 0 (every "
                                        "choice timed) or a number of rows, got "
                + std::to_string(*rows));
        if (rows == mKernelsFrom)
            return;
        dropChoices();
        mKernelsFrom = rows;
    }

    std::optional<std::int64_t> kernelsFromRows() const
    {
        return mKernelsFrom;
    }

    GraphStats graphStats() const
    {
        GraphStats stats = mGraphStats;
        stats.captured = static_cast<int>(mGraphs.size());
        return stats;
    }

    MemoryReport memory() const
    {
        return mMemory;
    }

    std::map<std::string, std::int64_t> residentPrograms() const
    {
        std::map<std::string, std::int64_t> out;
        for (std::size_t i = 0; i < mSpec.resident.size(); ++i)
            out[mSpec.resident[i].first] = mValues[std::size(kStepSymbols) + i];
        return out;
    }

    std::vector<GemmChoice> gemmChoices() const
    {
        std::vector<GemmChoice> out = mGemm->choices();
        for (auto const& c : mAlternativeChoices)
            out.push_back(GemmChoice{c.m, c.n, c.k, "choice", false, c.label + ": " + c.report});
        return out;
    }

    std::string describe() const
    {
        return std::string(mProps.name) + " (sm_" + std::to_string(mSm) + ", " + std::to_string(mProps.multiProcessorCount)
            + " SMs), cubins for sm_" + std::to_string(mCubinSm) + ", " + mGemm->describe() + ", "
            + std::to_string(mNumBlocks) + " KV blocks";
    }

    /// Makes, before any step, the choices of the GEMMs that run through cuBLASLt on its
    /// heuristic's pick (more rows than Kiln's own alternatives and cuBLASLt's timed candidates
    /// take), and runs each once so that the kernel it picked is loaded: at the rows of every
    /// decode batch bucket up to `maxBatchSize` and of every multiple of kAheadRows up to
    /// `maxNumTokens` (each at most the engine's). A step meeting such an M later neither asks
    /// the heuristic nor loads a kernel before its launches (or inside its graph's capture).
    /// Returns the GEMMs prepared.
    int prepareGemmsAhead(std::int64_t maxBatchSize, std::int64_t maxNumTokens)
    {
        KILN_CUDA_CHECK(cudaSetDevice(mDevice));
        ValuesRestored const restored(mValues);
        std::set<std::int64_t> rows;
        for (std::int64_t const bucket : decodeBuckets(maxBatchSize))
            rows.insert(bucket);
        for (std::int64_t t = kAheadRows; t <= std::min<std::int64_t>(maxNumTokens, mSpec.maxNumTokens); t += kAheadRows)
            rows.insert(t);
        int prepared = 0;
        for (std::int64_t const t : rows)
        {
            // The rows of a decode step of t sequences (at most the engine's batch): the
            // layers' GEMMs take T, a GEMM of the last tokens B.
            decodeValues(t, 1, 1);
            for (auto& item : mProgram)
            {
                auto* gemm = std::get_if<ResolvedGemm>(&item);
                if (gemm == nullptr)
                    continue;
                auto const m = gemm->m.eval(mValues);
                if (mChosen.count({gemm->shape, m}) != 0)
                    continue;
                // Nothing in the GEMM's buffers is live before a step (as for prepareGemms).
                if (gemm->banded(m))
                {
                    // Timed alone: the step inputs hold no step of these rows for the kernels
                    // before it to read.
                    chooseAt(*gemm, m, false);
                    runGemm(*gemm);
                    ++prepared;
                    continue;
                }
                if (m <= std::max<std::int64_t>(gemm->maxM, kAheadMinRows))
                    continue;
                chooseHeuristic(*gemm, m);
                mGemm->run(gemm->id, static_cast<int>(m), mStream);
                ++prepared;
            }
        }
        KILN_CUDA_CHECK(cudaStreamSynchronize(mStream));
        return prepared;
    }

    /// Makes the GEMM choices and captures the graphs of greedy decode steps of every batch
    /// bucket up to `maxBatchSize` whose launch shape does not depend on the context length (the
    /// same for one cached token as for the engine's longest), so the steps that meet them later
    /// leave the GPU no time idle for either. Returns how many were captured.
    int captureGraphs(std::int64_t maxBatchSize)
    {
        if (!mCudaGraphs)
            return 0;
        KILN_CUDA_CHECK(cudaSetDevice(mDevice));
        ValuesRestored const restored(mValues);
        std::int64_t const logits = mSelect == 0 ? 1 : 0; // a greedy step's, as start() sets it
        int captured = 0;
        for (std::int64_t const bucket : decodeBuckets(maxBatchSize))
        {
            decodeValues(bucket, mSpec.maxSeqLen, logits);
            std::vector<std::int64_t> key = graphKey();
            decodeValues(bucket, 1, logits);
            if (graphKey() != key || mGraphs.count(key) != 0 || mGraphs.size() >= kMaxGraphs)
                continue;
            // The choices run the kernels before each GEMM: on a step's worth of inputs.
            uploadPadRows(bucket);
            prepareGemms();
            captureGraph(std::move(key));
            ++captured;
        }
        return captured;
    }

private:
    void dropGraphs() noexcept
    {
        for (auto& [key, exec] : mGraphs)
        {
            cudaGraphExecDestroy(exec);
        }
        mGraphs.clear();
    }

    void unload() noexcept
    {
        dropGraphs();
        mGemm.reset();
        for (CUmodule module : mModules)
        {
            mDriver.moduleUnload(module);
        }
        mModules.clear();
    }

    struct InputRegion
    {
        std::size_t offset = 0;
        std::size_t capacity = 0;
    };

    /// The engine's cubins for this device: its own SM, else the newest of the same major
    /// version not above it (sm_80 code runs on sm_86 and sm_89).
    void loadKernels()
    {
        // The engine's targets: the SMs of a kernel built for every one of them.
        std::vector<int> available;
        for (auto const& [id, desc] : mSpec.kernels)
        {
            if (desc.minSm != 0)
                continue;
            for (auto const& [sm, binary] : desc.bySm)
                available.push_back(sm);
            break;
        }
        int chosen = -1;
        for (int sm : available)
        {
            if (sm == mSm)
                chosen = sm;
        }
        if (chosen < 0 && mSm / 10 < 9)
        {
            for (int sm : available)
                if (sm / 10 == mSm / 10 && sm < mSm)
                    chosen = std::max(chosen, sm);
        }
        if (chosen < 0)
        {
            std::string list;
            for (int sm : available)
                list += (list.empty() ? "sm_" : ", sm_") + std::to_string(sm);
            throw std::invalid_argument("engine has kernels for " + (list.empty() ? std::string("no GPU") : list + " only")
                + "; this GPU is sm_" + std::to_string(mSm) + ": rebuild with --target-sm " + std::to_string(mSm));
        }
        mCubinSm = chosen;
        int optinShared = 0;
        KILN_CUDA_CHECK(cudaDeviceGetAttribute(&optinShared, cudaDevAttrMaxSharedMemoryPerBlockOptin, mDevice));
        for (auto const& [id, desc] : mSpec.kernels)
        {
            auto const it = desc.bySm.find(chosen);
            if (it == desc.bySm.end() && desc.minSm > chosen)
                continue; // a newer GPU's kernel: its alternatives are left out (resolveProgram)
            if (it == desc.bySm.end())
                throw std::runtime_error("engine kernel " + id + " has no cubin for sm_" + std::to_string(chosen)
                    + ": the engine is damaged; rebuild it with engine-build");
            KernelBinary const& binary = it->second;
            if (binary.sharedBytes > optinShared)
                throw std::invalid_argument("kernel " + binary.name + " needs " + std::to_string(binary.sharedBytes)
                    + " bytes of shared memory, this GPU allows " + std::to_string(optinShared)
                    + ": rebuild the engine for sm_" + std::to_string(mSm));
            CUmodule module = nullptr;
            mDriver.check(mDriver.moduleLoadData(&module, binary.cubin.data()), "cuModuleLoadData");
            mModules.push_back(module);
            CUfunction function = nullptr;
            mDriver.check(mDriver.moduleGetFunction(&function, module, binary.name.c_str()), "cuModuleGetFunction");
            if (binary.sharedBytes > 48 * 1024)
            {
                mDriver.check(mDriver.funcSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                  binary.sharedBytes),
                    "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
            }
            mKernels[id] = ResolvedKernel{function, &binary};
        }
    }

    /// Each resident symbol's value: the programs of its kernel one multiprocessor holds at once
    /// (registers, shared memory and warps, as the driver counts them) times NSM.
    void countResident()
    {
        for (std::size_t i = 0; i < mSpec.resident.size(); ++i)
        {
            auto const& [name, id] = mSpec.resident[i];
            auto const kernel = mKernels.find(id);
            if (kernel == mKernels.end())
                throw std::invalid_argument("engine plan symbol '" + name + "' counts kernel " + id
                    + ", which the engine lacks: the engine is damaged; rebuild it with engine-build");
            KernelBinary const& binary = *kernel->second.binary;
            int perSm = 0;
            mDriver.check(mDriver.occupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel->second.function,
                              binary.numWarps * 32, static_cast<std::size_t>(binary.sharedBytes)),
                "cuOccupancyMaxActiveBlocksPerMultiprocessor");
            mValues[std::size(kStepSymbols) + i] = static_cast<std::int64_t>(std::max(perSm, 1)) * mValues[kNsm];
        }
    }

    std::size_t loadLimitValue(std::string const& formula) const
    {
        // Scratch sizes are evaluated for the largest step the engine accepts.
        std::vector<std::int64_t> values(mSymbols.size(), 0);
        values[kT] = mSpec.maxNumTokens;
        values[kB] = mSpec.maxBatchSize;
        values[kMaxCtx] = mSpec.maxSeqLen;
        values[kMaxQ] = mSpec.maxNumTokens;
        values[kMaxBlk] = mSpec.maxBlocksPerSeq;
        values[kNsm] = mProps.multiProcessorCount;
        values[kBd] = mSpec.maxBatchSize;
        values[kLogits] = 1;
        std::copy_n(mValues.begin() + static_cast<std::ptrdiff_t>(std::size(kStepSymbols)), mSpec.resident.size(),
            values.begin() + static_cast<std::ptrdiff_t>(std::size(kStepSymbols)));
        return static_cast<std::size_t>(std::max<std::int64_t>(0, Expr::parse(formula, mSymbols).eval(values)));
    }

    void allocate(std::vector<WeightData> const& weights, PlanExecutorOptions const& options)
    {
        // Sizes first, so a model that does not fit is refused before anything is uploaded.
        std::size_t weightBytes = 0;
        for (auto const& w : weights)
            weightBytes += alignUp(w.nbytes);
        std::size_t inputBytes = 0;
        auto const maxT = static_cast<std::size_t>(mSpec.maxNumTokens);
        auto const maxB = static_cast<std::size_t>(mSpec.maxBatchSize);
        for (auto const& [name, dtype] : mSpec.stepInputs)
        {
            std::size_t elems = maxT;
            if (name == "block_tables")
                elems = maxB * static_cast<std::size_t>(mSpec.maxBlocksPerSeq);
            else if (name == "query_start")
                elems = maxB + 1;
            else if (name == "context_lens" || name == "last_token_index")
                elems = maxB;
            mInputs[name] = InputRegion{inputBytes, elems * dtypeSize(dtype)};
            inputBytes += alignUp(elems * dtypeSize(dtype));
        }
        std::size_t scratchBytes = 0;
        std::map<std::string, std::size_t> scratchOffsets;
        std::map<std::string, std::size_t> scratchSizes;
        for (auto const& [name, formulas] : mSpec.scratch)
        {
            std::size_t size = 0;
            for (auto const& f : formulas)
                size = std::max(size, loadLimitValue(f));
            scratchSizes[name] = size;
            scratchOffsets[name] = scratchBytes;
            scratchBytes += alignUp(std::max<std::size_t>(size, 1));
        }
        std::size_t constBytes = 0;
        std::map<std::string, std::size_t> constOffsets;
        for (auto const& [name, values] : mSpec.constants)
        {
            constOffsets[name] = constBytes;
            constBytes += alignUp(values.size() * sizeof(float));
        }
        std::size_t const activationBytes = alignUp(static_cast<std::size_t>(mSpec.arenaBytes)) + inputBytes
            + scratchBytes + constBytes;
        std::size_t freeBytes = 0;
        std::size_t totalBytes = 0;
        KILN_CUDA_CHECK(cudaMemGetInfo(&freeBytes, &totalBytes));
        std::size_t const need = weightBytes + activationBytes + kWorkspaceBytes;
        if (need > freeBytes)
        {
            throw std::invalid_argument("the model does not fit on GPU " + std::to_string(mDevice) + " (" + mProps.name
                + "): weights " + gib(weightBytes) + " + activations " + gib(activationBytes) + " + workspace "
                + gib(kWorkspaceBytes) + " = " + gib(need) + ", but only " + gib(freeBytes) + " of " + gib(totalBytes)
                + " are free; use a smaller model, dtype or --max-num-tokens");
        }

        mWeights = DeviceMemory(weightBytes);
        uploadWeights(weights);
        mArena = DeviceMemory(alignUp(static_cast<std::size_t>(mSpec.arenaBytes)));
        mInputBuffer = DeviceMemory(inputBytes);
        mHostInputs = PinnedMemory(inputBytes);
        mScratch = DeviceMemory(scratchBytes);
        for (auto const& [name, offset] : scratchOffsets)
            mScratchPtr[name] = mScratch.address() + offset;
        mScratchSize = scratchSizes;
        for (auto const& name : mSpec.zeroedScratch)
        {
            if (!scratchSizes.count(name))
                throw std::invalid_argument("the plan zeroes scratch '" + name + "', which it does not size");
            KILN_CUDA_CHECK(cudaMemset(reinterpret_cast<void*>(mScratchPtr[name]), 0, scratchSizes[name]));
        }
        mConsts = DeviceMemory(constBytes);
        for (auto const& [name, values] : mSpec.constants)
        {
            mConstPtr[name] = mConsts.address() + constOffsets[name];
            KILN_CUDA_CHECK(cudaMemcpy(reinterpret_cast<void*>(mConstPtr[name]), values.data(),
                values.size() * sizeof(float), cudaMemcpyHostToDevice));
        }
        mHostLogits = PinnedMemory(maxB * static_cast<std::size_t>(mSpec.logits.cols) * sizeof(float));
        mGemm = std::make_unique<GemmRunner>(options.cublasLtPath, kWorkspaceBytes);

        // The KV cache takes its fraction of what is left.
        KILN_CUDA_CHECK(cudaMemGetInfo(&freeBytes, &totalBytes));
        mBlockElems = static_cast<std::size_t>(mSpec.numKvHeads) * mSpec.tokensPerBlock * mSpec.headDim;
        std::size_t const blockBytes = static_cast<std::size_t>(mSpec.numLayers) * 2 * mBlockElems * dtypeSize(mSpec.kvDtype);
        auto const budget = static_cast<std::size_t>(static_cast<double>(freeBytes) * options.kvCacheFreeGpuMemoryFraction);
        std::size_t blocks = options.numBlocks ? static_cast<std::size_t>(*options.numBlocks)
                                               : (blockBytes > 0 ? budget / blockBytes : 0);
        blocks = std::min<std::size_t>(blocks, 1U << 30U);
        if (!options.numBlocks && blocks < static_cast<std::size_t>(mSpec.maxBlocksPerSeq))
        {
            throw std::invalid_argument("the KV cache does not fit: one sequence of max_seq_len " + std::to_string(mSpec.maxSeqLen)
                + " needs " + std::to_string(mSpec.maxBlocksPerSeq) + " blocks of " + std::to_string(blockBytes)
                + " bytes, but " + std::to_string(options.kvCacheFreeGpuMemoryFraction) + " of the " + gib(freeBytes)
                + " left after weights holds " + std::to_string(blocks) + "; raise the fraction or lower --max-seq-len");
        }
        if (blocks * blockBytes > freeBytes)
            throw std::invalid_argument("a KV cache of " + std::to_string(blocks) + " blocks needs " + gib(blocks * blockBytes)
                + " but only " + gib(freeBytes) + " are free");
        mNumBlocks = static_cast<int>(blocks);
        mKv = DeviceMemory(blocks * blockBytes);
        // Zeroed once: the attention kernels read an 8-bit cache's V by whole blocks, past a
        // sequence's last token too (weighted 0), so every byte must hold a finite value.
        KILN_CUDA_CHECK(cudaMemset(reinterpret_cast<void*>(mKv.address()), 0, blocks * blockBytes));
        mMemory = MemoryReport{weightBytes, activationBytes, kWorkspaceBytes, blocks * blockBytes, freeBytes, totalBytes};
    }

    /// Weights go through two pinned staging buffers, so reading the next chunk from the
    /// (memory-mapped) file, on several threads, overlaps the copy of the last.
    void uploadWeights(std::vector<WeightData> const& weights)
    {
        constexpr std::size_t kChunk = 64U << 20U;
        PinnedMemory staging[2] = {PinnedMemory(kChunk), PinnedMemory(kChunk)};
        cudaEvent_t done[2] = {nullptr, nullptr};
        cudaStream_t stream = nullptr;
        KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        KILN_CUDA_CHECK(cudaEventCreateWithFlags(&done[0], cudaEventDisableTiming));
        KILN_CUDA_CHECK(cudaEventCreateWithFlags(&done[1], cudaEventDisableTiming));
        int turn = 0;
        std::size_t offset = 0;
        try
        {
            for (auto const& w : weights)
            {
                mWeightPtr[w.name] = mWeights.address() + offset;
                for (std::size_t at = 0; at < w.nbytes; at += kChunk)
                {
                    std::size_t const n = std::min(kChunk, w.nbytes - at);
                    KILN_CUDA_CHECK(cudaEventSynchronize(done[turn]));
                    copyOnThreads(staging[turn].get<char>(), static_cast<char const*>(w.data) + at, n);
                    KILN_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(mWeights.address() + offset + at),
                        staging[turn].get<char>(), n, cudaMemcpyHostToDevice, stream));
                    KILN_CUDA_CHECK(cudaEventRecord(done[turn], stream));
                    turn ^= 1;
                }
                offset += alignUp(w.nbytes);
            }
            KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
        }
        catch (...)
        {
            cudaStreamSynchronize(stream);
            cudaEventDestroy(done[0]);
            cudaEventDestroy(done[1]);
            cudaStreamDestroy(stream);
            throw;
        }
        cudaEventDestroy(done[0]);
        cudaEventDestroy(done[1]);
        cudaStreamDestroy(stream);
    }

    CUdeviceptr resolve(BufferRef const& ref, std::string const& where) const
    {
        auto lookup = [&](auto const& map, char const* what) -> CUdeviceptr
        {
            auto const it = map.find(ref.name);
            if (it == map.end())
                throw std::runtime_error(where + " uses " + what + " '" + ref.name + "' that the engine does not have");
            return static_cast<CUdeviceptr>(it->second);
        };
        switch (ref.kind)
        {
        case BufferRef::Kind::Arena:
            if (ref.offset < 0 || ref.offset >= mSpec.arenaBytes)
                throw std::runtime_error(where + " points outside the activation arena");
            return mArena.address() + static_cast<CUdeviceptr>(ref.offset);
        case BufferRef::Kind::Input:
        {
            auto const it = mInputs.find(ref.name);
            if (it == mInputs.end())
                throw std::runtime_error(where + " uses step input '" + ref.name + "' that the plan does not declare");
            return mInputBuffer.address() + it->second.offset;
        }
        case BufferRef::Kind::Weight: return lookup(mWeightPtr, "weight");
        case BufferRef::Kind::Scratch: return lookup(mScratchPtr, "scratch") + static_cast<CUdeviceptr>(ref.offset);
        case BufferRef::Kind::Const: return lookup(mConstPtr, "table");
        case BufferRef::Kind::Kv:
        {
            if (ref.layer < 0 || ref.layer >= mSpec.numLayers || ref.half < 0 || ref.half > 1)
                throw std::runtime_error(where + " uses KV layer " + std::to_string(ref.layer) + " of "
                    + std::to_string(mSpec.numLayers));
            std::size_t const plane = static_cast<std::size_t>(ref.layer * 2 + ref.half) * mNumBlocks * mBlockElems;
            return mKv.address() + plane * dtypeSize(mSpec.kvDtype);
        }
        }
        throw std::logic_error("unknown buffer kind");
    }

    ResolvedLaunch resolveLaunch(LaunchStep const& step)
    {
        auto const kernel = mKernels.find(step.kernel);
        if (kernel == mKernels.end())
            throw std::runtime_error(step.label + " launches unknown kernel " + step.kernel);
        KernelBinary const& binary = *kernel->second.binary;
        if (binary.params.size() != step.args.size() + static_cast<std::size_t>(binary.numExtraParams))
            throw std::runtime_error(step.label + ": " + binary.name + " takes " + std::to_string(binary.params.size())
                + " parameters, the program passes " + std::to_string(step.args.size()) + " + "
                + std::to_string(binary.numExtraParams) + " scratch");
        ResolvedLaunch launch;
        launch.label = step.label;
        launch.function = kernel->second.function;
        launch.threads = static_cast<unsigned>(32 * binary.numWarps);
        launch.shared = static_cast<unsigned>(binary.sharedBytes);
        launch.pdl = binary.pdl;
        for (int d = 0; d < 3; ++d)
            launch.grid[d] = Expr::parse(step.grid[static_cast<std::size_t>(d)], mSymbols);
        if (!step.when.empty())
            launch.when = Expr::parse(step.when, mSymbols);
        launch.slots.assign(binary.params.size(), 0);
        for (std::size_t i = 0; i < step.args.size(); ++i)
        {
            KernelArg const& arg = step.args[i];
            static char const* const kExpected[] = {"u64", "u32", "f32"};
            char const* expected = kExpected[static_cast<int>(arg.kind)];
            if (binary.params[i] != expected)
                throw std::runtime_error(step.label + ": parameter " + std::to_string(i) + " of " + binary.name
                    + " is " + binary.params[i] + ", the program passes " + expected);
            if (arg.kind == KernelArg::Kind::Pointer)
                launch.slots[i] = resolve(arg.ref, step.label);
            else if (arg.kind == KernelArg::Kind::Float32)
                std::memcpy(&launch.slots[i], &arg.value, sizeof(float));
            else
                launch.intArgs.emplace_back(i, Expr::parse(arg.expr, mSymbols));
        }
        // Trailing scratch pointers stay 0 (null), but the global scratch of a kernel that needs
        // it (the first of them), given the plan buffer its launch names.
        if (binary.globalScratchBytes > 0)
        {
            auto const buffer = mScratchSize.find(step.globalScratch);
            if (step.globalScratch.empty() || buffer == mScratchSize.end() || binary.numExtraParams < 1)
                throw std::runtime_error(step.label + ": " + binary.name + " needs "
                    + std::to_string(binary.globalScratchBytes)
                    + " bytes of global scratch a program, which the plan does not give it: the engine is "
                      "damaged; rebuild it");
            launch.slots[step.args.size()] = mScratchPtr.at(step.globalScratch);
            launch.scratchPerProgram = binary.globalScratchBytes;
            launch.scratchCapacity = static_cast<std::int64_t>(buffer->second);
        }
        for (auto& slot : launch.slots)
            launch.params.push_back(&slot);
        return launch;
    }

    void resolveProgram()
    {
        for (auto const& item : mSpec.program)
        {
            if (auto const* step = std::get_if<LaunchStep>(&item))
            {
                mProgram.emplace_back(resolveLaunch(*step));
            }
            else
            {
                auto const& g = std::get<GemmStep>(item);
                cudaDataType_t const outType = cudaType(g.dtype);
                cudaDataType_t inType = outType;
                void const* aScale = nullptr;
                void const* wScale = nullptr;
                if (!g.inDtype.empty() && g.inDtype != g.dtype)
                {
                    if (g.inDtype != "float8_e4m3fn" || !g.aScale || !g.wScale)
                        throw std::runtime_error(g.label + ": a GEMM over " + g.inDtype
                            + " needs float8_e4m3fn with both scales: the engine is damaged; rebuild it");
                    if (mSm < 89)
                        throw std::invalid_argument("the engine runs FP8 GEMMs, which need SM 89 or newer; this GPU is sm_"
                            + std::to_string(mSm) + ": rebuild without --quant fp8");
                    inType = CUDA_R_8F_E4M3;
                    aScale = reinterpret_cast<void const*>(resolve(*g.aScale, g.label));
                    wScale = reinterpret_cast<void const*>(resolve(*g.wScale, g.label));
                }
                GemmProblem problem{outType, inType, g.n, g.k, g.lda, g.ldc,
                    reinterpret_cast<void const*>(resolve(g.a, g.label)),
                    reinterpret_cast<void const*>(resolve(g.w, g.label)), reinterpret_cast<void*>(resolve(g.out, g.label)),
                    g.bias ? reinterpret_cast<void const*>(resolve(*g.bias, g.label)) : nullptr, aScale, wScale,
                    g.residual ? reinterpret_cast<void const*>(resolve(*g.residual, g.label)) : nullptr, g.ldr};
                // The choice is an index into the alternatives: only GEMMs that offer the same
                // kernels (and prologue) may share it; and those with the same rows, so that the
                // GEMMs a choice is timed over all have its M (the layers' GEMMs, not the last
                // layer's on the last tokens only).
                std::string shape = g.dtype + "/" + g.inDtype + "/" + std::to_string(g.n) + "x"
                    + std::to_string(g.k) + "/" + std::to_string(g.lda) + "/" + std::to_string(g.ldc)
                    + (g.bias ? "/bias" : "") + (g.residual ? "/residual:" + std::to_string(g.ldr) : "")
                    + "/rows:" + g.m;
                for (auto const& alternative : g.alternatives)
                    for (auto const& step : alternative.steps)
                        shape += "/" + step.kernel;
                for (auto const& step : g.prologue)
                    shape += "/prologue:" + step.kernel;
                for (auto const& step : g.epilogue)
                    shape += "/epilogue:" + step.kernel;
                auto const shapeId = mShapeIds.emplace(shape, static_cast<int>(mShapeIds.size())).first->second;
                ResolvedGemm gemm{g.label, mGemm->add(problem), Expr::parse(g.m, mSymbols), g.n, g.k, shapeId, 0, 0, {}, {}, {}, {}};
                for (auto const& alternative : g.alternatives)
                {
                    bool const loaded = std::all_of(alternative.steps.begin(), alternative.steps.end(),
                        [&](LaunchStep const& step)
                        { return mKernels.count(step.kernel) != 0 || mSpec.kernels.count(step.kernel) == 0; });
                    if (!loaded)
                        continue; // it launches a kernel for newer GPUs (KernelDesc::minSm)
                    if (alternative.minM < 1 || alternative.minM > alternative.maxM || alternative.preferredFromM < 0)
                        throw std::runtime_error(g.label + ": an alternative for " + std::to_string(alternative.minM)
                            + " to " + std::to_string(alternative.maxM) + " rows, preferred from "
                            + std::to_string(alternative.preferredFromM) + ": the engine is damaged; rebuild it");
                    ResolvedAlternative resolved{alternative.minM, alternative.maxM, alternative.preferredFromM, {}};
                    for (auto const& step : alternative.steps)
                        resolved.steps.push_back(resolveLaunch(step));
                    gemm.alternatives.push_back(std::move(resolved));
                    gemm.maxM = std::max(gemm.maxM, alternative.maxM);
                    if (alternative.minM > 1)
                        gemm.bandFrom = gemm.bandFrom == 0 ? alternative.minM : std::min(gemm.bandFrom, alternative.minM);
                }
                for (auto const& step : g.prologue)
                    gemm.prologue.push_back(resolveLaunch(step));
                for (auto const& step : g.epilogue)
                    gemm.epilogue.push_back(resolveLaunch(step));
                if (!mProgram.empty())
                    gemm.before = mProgram.size() - 1;
                if (mShapeMembers.size() <= static_cast<std::size_t>(shapeId))
                    mShapeMembers.resize(static_cast<std::size_t>(shapeId) + 1);
                mShapeMembers[static_cast<std::size_t>(shapeId)].push_back(mProgram.size());
                mProgram.emplace_back(std::move(gemm));
            }
        }
        mLogits = resolve(mSpec.logits.ref, "the logits output");
        if (mSpec.select)
        {
            if (mSpec.select->capacity < mSpec.maxBatchSize)
                throw std::runtime_error("the greedy pick holds " + std::to_string(mSpec.select->capacity)
                    + " rows, fewer than max_batch_size: the engine is damaged; rebuild it with engine-build");
            mSelect = resolve(mSpec.select->ref, "the greedy pick");
            mHostSelect = PinnedMemory(8 * static_cast<std::size_t>(mSpec.select->capacity));
        }
        // A graph is valid for every step whose symbols read by the program are equal.
        std::vector<bool> used(mSymbols.size(), false);
        auto mark = [&](Expr const& e)
        {
            for (std::size_t index : e.symbols())
                used[index] = true;
        };
        auto markLaunch = [&](ResolvedLaunch const& launch)
        {
            for (auto const& g : launch.grid)
                mark(g);
            if (launch.when)
                mark(*launch.when);
            for (auto const& [slot, expr] : launch.intArgs)
                mark(expr);
        };
        for (auto const& item : mProgram)
        {
            if (auto const* launch = std::get_if<ResolvedLaunch>(&item))
            {
                markLaunch(*launch);
            }
            else
            {
                auto const& gemm = std::get<ResolvedGemm>(item);
                mark(gemm.m);
                for (auto const& alternative : gemm.alternatives)
                    for (auto const& launch : alternative.steps)
                        markLaunch(launch);
                for (auto const& launch : gemm.prologue)
                    markLaunch(launch);
                for (auto const& launch : gemm.epilogue)
                    markLaunch(launch);
            }
        }
        for (std::size_t i = 0; i < used.size(); ++i)
            if (used[i])
                mGraphSymbols.push_back(i);
        if (mSpec.logits.dtype != "float32")
            throw std::runtime_error("the plan's logits are " + mSpec.logits.dtype + ", the runtime reads float32");
    }

    /// Decode batches run padded up to 1, 2, 4, 8, then multiples of 8 up to 128, then of 32.
    std::int64_t batchBucket(std::int64_t b) const
    {
        std::int64_t bucket = 1;
        if (b <= 8)
        {
            while (bucket < b)
                bucket *= 2;
        }
        else
        {
            std::int64_t const step = b <= 128 ? 8 : 32;
            bucket = (b + step - 1) / step * step;
        }
        return std::min<std::int64_t>(bucket, std::min(mSpec.maxBatchSize, mSpec.maxNumTokens));
    }

    /// `step` with rows appended up to `bucket`: each pad row decodes token 0 at position 0 over
    /// one cached token of block 0 and writes no KV (slot -1); its outputs are never read.
    void pad(StepInputs const& step, std::int64_t bucket)
    {
        mPadded = step;
        auto const maxBlk = static_cast<std::size_t>(step.maxBlocksPerSeq);
        for (auto b = static_cast<std::int32_t>(step.numSequences); b < bucket; ++b)
        {
            mPadded.inputIds.push_back(0);
            mPadded.positions.push_back(0);
            mPadded.slotMapping.push_back(-1);
            mPadded.blockTables.resize(mPadded.blockTables.size() + maxBlk, 0);
            mPadded.contextLens.push_back(1);
            mPadded.queryStart.push_back(b + 1);
            mPadded.lastTokenIndex.push_back(b);
        }
        mPadded.numSequences = static_cast<SizeType>(bucket);
    }

    /// The step inputs of a decode step of `rows` pad rows (pad()), for the choices made before
    /// any step (captureGraphs): the kernels a choice runs before each GEMM then read in bounds.
    void uploadPadRows(std::int64_t rows)
    {
        StepInputs none;
        none.maxBlocksPerSeq = mSpec.maxBlocksPerSeq;
        none.queryStart.push_back(0);
        pad(none, rows);
        KILN_CUDA_CHECK(cudaStreamSynchronize(mStream)); // the pinned staging buffer is free
        upload(mPadded);
    }

    void upload(StepInputs const& step)
    {
        for (auto const& [name, input] : mInputs)
        {
            auto const [data, bytes] = hostInput(step, name);
            if (bytes == 0)
                continue;
            std::memcpy(mHostInputs.get<char>() + input.offset, data, bytes);
            KILN_CUDA_CHECK(cudaMemcpyAsync(mInputBuffer.get<char>() + input.offset,
                mHostInputs.get<char>() + input.offset, bytes, cudaMemcpyHostToDevice, mStream));
        }
    }

    /// Launches the program; `afterFirstGemm` (when given) runs once its first GEMM is queued.
    void runProgram(std::function<void()> const& afterFirstGemm = {})
    {
        bool first = true;
        for (auto& item : mProgram)
        {
            if (auto* launch = std::get_if<ResolvedLaunch>(&item))
            {
                run(*launch);
                continue;
            }
            runGemm(std::get<ResolvedGemm>(item));
            if (first && afterFirstGemm)
                afterFirstGemm();
            first = false;
        }
    }

    void runGemm(ResolvedGemm& gemm)
    {
        auto const m = gemm.m.eval(mValues);
        // prepareGemms chose before the step (timing here would overwrite live buffers).
        int const choice = m > 0 && m <= gemm.maxM ? mChosen.at({gemm.shape, m}) : -1;
        if (choice < 0)
        {
            runCublasLt(gemm, m);
            return;
        }
        for (auto& launch : gemm.alternatives[static_cast<std::size_t>(choice)].steps)
            run(launch);
    }

    /// The GEMM through cuBLASLt, with the launches that write its operands and those after it.
    void runCublasLt(ResolvedGemm& gemm, std::int64_t m)
    {
        for (auto& launch : gemm.prologue)
            run(launch);
        mGemm->run(gemm.id, static_cast<int>(m), mStream);
        for (auto& launch : gemm.epilogue)
            run(launch);
    }

    /// Decides, before a step runs, what each of its GEMMs runs at this step's M (cuBLASLt's
    /// algorithm, or an alternative), so the step itself only launches. Timing runs GEMMs on
    /// whatever their buffers hold; before the step nothing in them is live (the step inputs and
    /// the KV cache are never a GEMM's output), and the step rewrites them.
    /// mValues holds the step symbols, the resident ones, then the derived ones: the derived
    /// ones evaluated from those before them.
    void evalDerived()
    {
        std::size_t const firstDerived = std::size(kStepSymbols) + mSpec.resident.size();
        for (std::size_t i = 0; i < mDerived.size(); ++i)
            mValues[firstDerived + i] = mDerived[i].eval(mValues);
    }

    void prepareGemms()
    {
        for (auto& item : mProgram)
        {
            auto* gemm = std::get_if<ResolvedGemm>(&item);
            if (gemm == nullptr)
                continue;
            auto const m = gemm->m.eval(mValues);
            if (m <= 0 || mChosen.count({gemm->shape, m}) != 0)
                continue;
            if (m <= gemm->maxM)
            {
                chooseAt(*gemm, m);
                continue;
            }
            chooseHeuristic(*gemm, m);
        }
    }

    /// The band of M an alternative for many rows is chosen for: (band / 2, band], a power of two.
    static std::int64_t rowBand(std::int64_t m)
    {
        std::int64_t band = 1;
        while (band < m)
            band *= 2;
        return band;
    }

    /// The alternatives of `gemm` preferred to cuBLASLt at `m` rows (untimed against it): from
    /// kernels_from_rows rows every one that takes m where that is set, else those the engine
    /// prefers from m or fewer rows (GemmAlternative::preferredFromM).
    std::vector<int> preferredAt(ResolvedGemm const& gemm, std::int64_t m) const
    {
        std::vector<int> preferred;
        for (std::size_t i = 0; i < gemm.alternatives.size(); ++i)
        {
            auto const& a = gemm.alternatives[i];
            std::int64_t const from = mKernelsFrom ? *mKernelsFrom : a.preferredFromM;
            if (m >= a.minM && m <= a.maxM && from > 0 && m >= from)
                preferred.push_back(static_cast<int>(i));
        }
        return preferred;
    }

    /// Where a preferred choice's preference came from, for its report.
    std::string preference() const
    {
        return mKernelsFrom ? "preferred from " + std::to_string(*mKernelsFrom) + " rows"
                            : "preferred by the engine";
    }

    /// choose() at `m`, but where an alternative for many rows takes it, once a band of M: the
    /// first M of a band met is timed, and its choice kept for every M of the band (their times
    /// differ little; steps with prompt tokens, each of its own M, would each time anew).
    void chooseAt(ResolvedGemm& gemm, std::int64_t m, bool lead = true)
    {
        if (!gemm.banded(m))
        {
            choose(gemm, m, lead);
            return;
        }
        // A band's rows where an alternative is preferred are chosen apart from the rest.
        auto const band = std::make_tuple(gemm.shape, rowBand(m), !preferredAt(gemm, m).empty());
        auto const known = mBandChosen.find(band);
        if (known == mBandChosen.end())
        {
            choose(gemm, m, lead);
            mBandChosen.emplace(band, mChosen.at({gemm.shape, m}));
            return;
        }
        if (known->second < 0)
            prepareCublasLt(timedPeers(gemm), m, nullptr);
        mChosen.emplace(std::make_pair(gemm.shape, m), known->second);
    }

    /// cuBLASLt's heuristic pick for `gemm`'s shape at `m` rows, with no alternative timed.
    void chooseHeuristic(ResolvedGemm& gemm, std::int64_t m)
    {
        prepareCublasLt(timedPeers(gemm), m, nullptr);
        mChosen.emplace(std::make_pair(gemm.shape, m), -1);
    }

    /// The GEMMs a choice for `gemm`'s shape is timed over: up to kTimedGemms of the program's
    /// GEMMs of that shape and rows (the layers'), `gemm` first.
    std::vector<ResolvedGemm*> timedPeers(ResolvedGemm& gemm)
    {
        std::vector<ResolvedGemm*> peers{&gemm};
        for (std::size_t index : mShapeMembers[static_cast<std::size_t>(gemm.shape)])
        {
            if (peers.size() == kTimedGemms)
                break;
            auto& peer = std::get<ResolvedGemm>(mProgram[index]);
            if (&peer != &gemm)
                peers.push_back(&peer);
        }
        return peers;
    }

    /// cuBLASLt's algorithm for `peers`' shape at `m` rows, timed over them (GemmRunner::prepare).
    void prepareCublasLt(std::vector<ResolvedGemm*> const& peers, std::int64_t m, ColdL2 const* cold)
    {
        std::vector<int> ids;
        for (ResolvedGemm* peer : peers)
            ids.push_back(peer->id);
        mGemm->prepare(ids, static_cast<int>(m), mStream, cold);
    }

    /// What runs `gemm` at `m` (<= gemm.maxM) rows: cuBLASLt (-1) or the alternative that times
    /// fastest. Each candidate is timed over several GEMMs of the shape back to back, as a step
    /// runs them one after another (each reads its own weight from memory, and launches overlap
    /// as in the step), so a microsecond of launch or timing noise weighs little; each after
    /// what runs before its GEMM in the step (the kernel, or the GEMM as chosen already: the
    /// program is prepared in order), since programmatic launch overlaps the two: a kernel that
    /// starts reading its weight while a light kernel finishes gains what it cannot after a
    /// GEMM, and one whose blocks wait on a GEMM's may slow it. That item's time alone is taken
    /// off (without `lead`, the GEMMs are timed alone: where the step inputs hold no step of
    /// these rows for those items to read). Decided by prepareGemms before a step (m > 0):
    /// timing writes those GEMMs' and kernels' outputs, which the step rewrites before reading
    /// (the decode kernel's K and V of this step's tokens included).
    void choose(ResolvedGemm& gemm, std::int64_t m, bool lead = true)
    {
        // Where alternatives are preferred, the fastest of them runs (one alone, untimed), not
        // timed against cuBLASLt.
        auto const preferred = preferredAt(gemm, m);
        if (preferred.size() == 1)
        {
            mChosen.emplace(std::make_pair(gemm.shape, m), preferred.front());
            mAlternativeChoices.push_back({static_cast<int>(m), gemm.n, gemm.k, gemm.label,
                "kiln #" + std::to_string(preferred.front()) + " (" + preference() + ", untimed)"});
            return;
        }
        auto const peers = timedPeers(gemm);
        ColdL2 const cold;
        if (preferred.empty())
            prepareCublasLt(peers, m, &cold);
        auto const before = [&](ResolvedGemm& g)
        {
            if (!lead || !g.before)
                return;
            auto& item = mProgram[*g.before];
            if (auto* launch = std::get_if<ResolvedLaunch>(&item))
            {
                run(*launch);
                return;
            }
            auto& previous = std::get<ResolvedGemm>(item);
            auto const rows = previous.m.eval(mValues);
            // A GEMM not prepared yet (a later layer's, of a shape further on) runs no lead.
            if (rows > 0 && mChosen.count({previous.shape, rows}) != 0)
                runGemm(previous);
        };
        bool const led = lead
            && std::any_of(peers.begin(), peers.end(), [](ResolvedGemm const* g) { return g->before.has_value(); });
        float const leadUs = led ? timeEach(peers, cold, before) : 0.0F;
        int best = -1;
        float bestUs = std::numeric_limits<float>::infinity();
        std::vector<std::pair<int, float>> times; // (alternative, us a GEMM); -1: cuBLASLt
        if (preferred.empty())
        {
            bestUs = timeEach(peers, cold,
                         [&](ResolvedGemm& g)
                         {
                             before(g);
                             runCublasLt(g, m);
                         })
                - leadUs;
            times.emplace_back(-1, bestUs);
        }
        // The candidates: the preferred alternatives, else every one that takes m.
        std::vector<int> candidates = preferred;
        if (preferred.empty())
            for (std::size_t i = 0; i < gemm.alternatives.size(); ++i)
                if (m >= gemm.alternatives[i].minM && m <= gemm.alternatives[i].maxM)
                    candidates.push_back(static_cast<int>(i));
        for (int const i : candidates)
        {
            float const us = timeEach(peers, cold,
                                 [&](ResolvedGemm& g)
                                 {
                                     before(g);
                                     for (auto& launch : g.alternatives[static_cast<std::size_t>(i)].steps)
                                         run(launch);
                                 })
                - leadUs;
            times.emplace_back(i, us);
            if (us < bestUs)
            {
                bestUs = us;
                best = i;
            }
        }
        mChosen.emplace(std::make_pair(gemm.shape, m), best);
        if (times.size() > 1 || !preferred.empty())
        {
            std::ostringstream report;
            report << (best < 0 ? "cuBLASLt" : "kiln #" + std::to_string(best))
                   << (preferred.empty() ? " (" : " (" + preference() + "; ")
                   << "timed over " << peers.size() << " GEMMs" << (led ? " after what runs before each" : "")
                   << ", us a GEMM:" << std::fixed << std::setprecision(1);
            char const* separator = " ";
            for (auto const& [index, us] : times)
            {
                report << separator << (index < 0 ? std::string("cuBLASLt ") : "#" + std::to_string(index) + " ") << us;
                separator = ", ";
            }
            report << ")";
            mAlternativeChoices.push_back({static_cast<int>(m), gemm.n, gemm.k, gemm.label, report.str()});
        }
    }

    /// Microseconds a GEMM: the best of a few runs of `runOne` over each of `peers` in turn,
    /// after one untimed run; L2 is evicted before each timed one.
    template <typename RunOne>
    float timeEach(std::vector<ResolvedGemm*> const& peers, ColdL2 const& cold, RunOne&& runOne)
    {
        auto once = [&]()
        {
            for (ResolvedGemm* peer : peers)
                runOne(*peer);
        };
        once();
        return bestOfRuns(mStream, 3, once, cold) / static_cast<float>(peers.size());
    }

    /// Replays the graph for this step's launch shape: the values of every symbol the program
    /// reads. The first step of a shape captures it.
    void runGraph()
    {
        std::vector<std::int64_t> key = graphKey();
        auto it = mGraphs.find(key);
        if (it == mGraphs.end())
        {
            if (mGraphs.size() >= kMaxGraphs)
            {
                runProgram();
                ++mGraphStats.eagerSteps;
                return;
            }
            // The choices per M time candidates, which a capture cannot hold: now.
            prepareGemms();
            it = captureGraph(std::move(key));
        }
        KILN_CUDA_CHECK(cudaGraphLaunch(it->second, mStream));
        ++mGraphStats.replays;
    }

    /// The launch shape of the step in mValues: the values of every symbol the program reads.
    std::vector<std::int64_t> graphKey() const
    {
        std::vector<std::int64_t> key;
        key.reserve(mGraphSymbols.size());
        for (std::size_t index : mGraphSymbols)
            key.push_back(mValues[index]);
        return key;
    }

    /// Captures the program at mValues as the graph of launch shape `key` (its GEMM choices
    /// made already).
    std::map<std::vector<std::int64_t>, cudaGraphExec_t>::iterator captureGraph(std::vector<std::int64_t> key)
    {
        auto const captureStart = std::chrono::steady_clock::now();
        KILN_CUDA_CHECK(cudaStreamBeginCapture(mStream, cudaStreamCaptureModeThreadLocal));
        cudaGraph_t graph = nullptr;
        try
        {
            runProgram();
        }
        catch (...)
        {
            cudaStreamEndCapture(mStream, &graph);
            if (graph != nullptr)
                cudaGraphDestroy(graph);
            throw;
        }
        KILN_CUDA_CHECK(cudaStreamEndCapture(mStream, &graph));
        cudaGraphExec_t exec = nullptr;
        cudaError_t const instantiated = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        KILN_CUDA_CHECK(instantiated);
        mGraphStats.captureSeconds
            += std::chrono::duration<double>(std::chrono::steady_clock::now() - captureStart).count();
        return mGraphs.emplace(std::move(key), exec).first;
    }

    /// mValues for a decode step of `t` tokens, one a sequence (B at most the engine's batch),
    /// whose longest context is `maxCtx`, with LOGITS `logits`.
    void decodeValues(std::int64_t t, std::int64_t maxCtx, std::int64_t logits)
    {
        std::int64_t const b = std::min<std::int64_t>(t, mSpec.maxBatchSize);
        mValues[kT] = t;
        mValues[kB] = b;
        mValues[kBd] = b;
        mValues[kMaxQ] = 1;
        mValues[kMaxCtx] = maxCtx;
        mValues[kMaxBlk] = mSpec.maxBlocksPerSeq;
        mValues[kLogits] = logits;
        evalDerived();
    }

    /// The decode batch buckets up to `maxBatchSize` (at most the engine's batch and tokens).
    std::vector<std::int64_t> decodeBuckets(std::int64_t maxBatchSize) const
    {
        std::int64_t const most = std::min<std::int64_t>({maxBatchSize, mSpec.maxBatchSize, mSpec.maxNumTokens});
        std::vector<std::int64_t> buckets;
        for (std::int64_t b = 1; b <= most; b = buckets.back() + 1)
            buckets.push_back(batchBucket(b));
        return buckets;
    }

    /// Copies back what the caller reads: the greedy picks and the logits of
    /// step.logitRows when the plan picks and the caller asked so, else every row's logits.
    /// `synchronised` is called once the stream has finished the step and the copies back.
    template <typename Synchronised>
    StepOutput collect(StepInputs const& step, Synchronised&& synchronised)
    {
        auto const rows = static_cast<std::size_t>(step.numSequences);
        auto const cols = static_cast<std::size_t>(mSpec.logits.cols);
        auto const* logits = reinterpret_cast<float const*>(mLogits);
        bool const pick = mSelect != 0 && step.logitRows.has_value();
        std::vector<SizeType> wanted;
        if (pick)
        {
            wanted = *step.logitRows;
        }
        else
        {
            wanted.resize(rows);
            std::iota(wanted.begin(), wanted.end(), 0);
        }
        // One copy of the span when the rows are many or contiguous, else one per row.
        std::size_t const first = wanted.empty() ? 0 : static_cast<std::size_t>(wanted.front());
        std::size_t const last = wanted.empty() ? 0 : static_cast<std::size_t>(wanted.back());
        if (!wanted.empty() && (last >= rows || first > last))
            throw std::invalid_argument("bad step: logit rows must be ascending within 0.." + std::to_string(rows - 1));
        bool const span = wanted.size() > 8 || last - first + 1 == wanted.size();
        if (!wanted.empty() && span)
        {
            KILN_CUDA_CHECK(cudaMemcpyAsync(mHostLogits.get<float>(), logits + first * cols,
                (last - first + 1) * cols * sizeof(float), cudaMemcpyDeviceToHost, mStream));
        }
        for (std::size_t i = 0; !span && i < wanted.size(); ++i)
        {
            KILN_CUDA_CHECK(cudaMemcpyAsync(mHostLogits.get<float>() + i * cols,
                logits + static_cast<std::size_t>(wanted[i]) * cols, cols * sizeof(float), cudaMemcpyDeviceToHost,
                mStream));
        }
        if (pick)
        {
            KILN_CUDA_CHECK(cudaMemcpyAsync(mHostSelect.get<char>(), reinterpret_cast<void const*>(mSelect),
                mHostSelect.size(), cudaMemcpyDeviceToHost, mStream));
        }
        KILN_CUDA_CHECK(cudaStreamSynchronize(mStream));
        KILN_CUDA_CHECK(cudaGetLastError());
        synchronised();
        StepOutput out;
        out.logits.resize(wanted.size() * cols);
        for (std::size_t i = 0; i < wanted.size(); ++i)
        {
            std::size_t const from = span ? static_cast<std::size_t>(wanted[i]) - first : i;
            std::memcpy(out.logits.data() + i * cols, mHostLogits.get<float>() + from * cols, cols * sizeof(float));
        }
        if (pick)
        {
            fillPicks(out, rows);
        }
        return out;
    }

    void fillPicks(StepOutput& out, std::size_t rows) const
    {
        auto const* tokens = mHostSelect.get<std::int32_t>();
        auto const* logProbs = reinterpret_cast<float const*>(tokens + mSpec.select->capacity);
        out.tokens.assign(tokens, tokens + rows);
        out.logProbs.assign(logProbs, logProbs + rows);
    }

    void run(ResolvedLaunch& launch)
    {
        if (launch.when && launch.when->eval(mValues) == 0)
            return;
        std::int64_t grid[3];
        for (int d = 0; d < 3; ++d)
        {
            grid[d] = launch.grid[d].eval(mValues);
            if (grid[d] <= 0)
                return;
        }
        if (launch.scratchPerProgram > 0 && grid[0] * grid[1] * grid[2] * launch.scratchPerProgram > launch.scratchCapacity)
            throw std::runtime_error(launch.label + ": " + std::to_string(grid[0] * grid[1] * grid[2])
                + " programs need more global scratch than the plan's " + std::to_string(launch.scratchCapacity)
                + " bytes: the engine is damaged; rebuild it");
        for (auto const& [slot, expr] : launch.intArgs)
        {
            auto const value = static_cast<std::int32_t>(expr.eval(mValues));
            std::memcpy(&launch.slots[slot], &value, sizeof(value));
        }
        if (!(launch.pdl && mProgrammaticLaunch))
        {
            mDriver.check(mDriver.launchKernel(launch.function, static_cast<unsigned>(grid[0]),
                              static_cast<unsigned>(grid[1]), static_cast<unsigned>(grid[2]), launch.threads, 1, 1,
                              launch.shared, mStream, launch.params.data(), nullptr),
                launch.label.c_str());
            return;
        }
        // The kernel waits for its predecessor's writes before touching memory (pdl.enter), so
        // it may be launched, and its blocks placed, while that kernel still runs.
        CUlaunchAttribute attribute{};
        attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        CUlaunchConfig config{};
        config.gridDimX = static_cast<unsigned>(grid[0]);
        config.gridDimY = static_cast<unsigned>(grid[1]);
        config.gridDimZ = static_cast<unsigned>(grid[2]);
        config.blockDimX = launch.threads;
        config.blockDimY = 1;
        config.blockDimZ = 1;
        config.sharedMemBytes = launch.shared;
        config.hStream = mStream;
        config.attrs = &attribute;
        config.numAttrs = 1;
        mDriver.check(mDriver.launchKernelEx(&config, launch.function, launch.params.data(), nullptr),
            launch.label.c_str());
    }

    /// A step outside the engine's limits would read or write out of bounds: refuse it.
    void validate(StepInputs const& s)
    {
        auto fail = [](std::string const& what) { throw std::invalid_argument("bad step: " + what); };
        auto const t = static_cast<std::int64_t>(s.inputIds.size());
        std::int64_t const b = s.numSequences;
        if (t < 1 || t > mSpec.maxNumTokens)
            fail(std::to_string(t) + " tokens, the engine takes 1.." + std::to_string(mSpec.maxNumTokens));
        if (b < 1 || b > mSpec.maxBatchSize)
            fail(std::to_string(b) + " sequences, the engine takes 1.." + std::to_string(mSpec.maxBatchSize));
        if (static_cast<std::int64_t>(s.positions.size()) != t || static_cast<std::int64_t>(s.slotMapping.size()) != t)
            fail("positions and slot_mapping must have one entry per token");
        if (static_cast<std::int64_t>(s.contextLens.size()) != b || static_cast<std::int64_t>(s.lastTokenIndex.size()) != b
            || static_cast<std::int64_t>(s.queryStart.size()) != b + 1)
            fail("context_lens, last_token_index need B entries and query_start B + 1");
        std::int64_t const maxBlk = s.maxBlocksPerSeq;
        if (maxBlk < 1 || static_cast<std::int64_t>(s.blockTables.size()) != b * maxBlk
            || b * maxBlk > static_cast<std::int64_t>(mSpec.maxBatchSize) * mSpec.maxBlocksPerSeq)
            fail("block_tables must be [B, MAXBLK] within the engine's max_batch_size x max_blocks_per_seq");
        std::int64_t const vocab = mSpec.logits.cols;
        for (auto id : s.inputIds)
            if (id < 0 || id >= vocab)
                fail("token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(vocab));
        std::int64_t const slots = static_cast<std::int64_t>(mNumBlocks) * mSpec.tokensPerBlock;
        for (auto slot : s.slotMapping)
            if (slot >= slots)
                fail("KV slot " + std::to_string(slot) + " beyond the cache's " + std::to_string(slots));
        if (s.queryStart[0] != 0 || s.queryStart[static_cast<std::size_t>(b)] != t)
            fail("query_start must run from 0 to T");
        std::int64_t maxCtx = 0;
        std::int64_t maxQ = 0;
        std::int64_t leadingDecodes = 0;
        for (std::int64_t i = 0; i < b; ++i)
        {
            std::int64_t const q = s.queryStart[static_cast<std::size_t>(i + 1)] - s.queryStart[static_cast<std::size_t>(i)];
            if (q == 1 && leadingDecodes == i)
                ++leadingDecodes;
            std::int64_t const ctx = s.contextLens[static_cast<std::size_t>(i)];
            if (q < 0 || ctx < q || ctx > maxBlk * mSpec.tokensPerBlock)
                fail("sequence " + std::to_string(i) + " has " + std::to_string(q) + " query tokens and context "
                    + std::to_string(ctx) + " (its blocks hold " + std::to_string(maxBlk * mSpec.tokensPerBlock) + ")");
            for (std::int64_t j = 0; j < (ctx + mSpec.tokensPerBlock - 1) / mSpec.tokensPerBlock; ++j)
            {
                auto const block = s.blockTables[static_cast<std::size_t>(i * maxBlk + j)];
                if (block < 0 || block >= mNumBlocks)
                    fail("block " + std::to_string(block) + " of sequence " + std::to_string(i) + " outside the cache's "
                        + std::to_string(mNumBlocks));
            }
            auto const last = s.lastTokenIndex[static_cast<std::size_t>(i)];
            if (last < 0 || last >= t)
                fail("last_token_index " + std::to_string(last) + " outside 0.." + std::to_string(t - 1));
            maxCtx = std::max(maxCtx, ctx);
            maxQ = std::max(maxQ, q);
        }
        mValues[kT] = t;
        mValues[kB] = b;
        mValues[kMaxCtx] = maxCtx;
        mValues[kMaxQ] = maxQ;
        mValues[kMaxBlk] = maxBlk;
        mValues[kBd] = leadingDecodes;
    }

    PlanSpec mSpec;
    int mDevice = 0;
    DriverApi const& mDriver;
    cudaDeviceProp mProps{};
    int mSm = 0;
    int mCubinSm = 0;
    SymbolTable mSymbols;
    std::vector<Expr> mDerived;
    std::vector<std::int64_t> mValues;
    std::vector<CUmodule> mModules;
    std::map<std::string, ResolvedKernel> mKernels;
    DeviceMemory mWeights;
    DeviceMemory mArena;
    DeviceMemory mInputBuffer;
    DeviceMemory mScratch;
    DeviceMemory mConsts;
    DeviceMemory mKv;
    PinnedMemory mHostInputs;
    PinnedMemory mHostLogits;
    std::map<std::string, InputRegion> mInputs;
    std::map<std::string, CUdeviceptr> mWeightPtr;
    std::map<std::string, CUdeviceptr> mScratchPtr;
    std::map<std::string, std::size_t> mScratchSize;
    std::map<std::string, CUdeviceptr> mConstPtr;
    std::size_t mBlockElems = 0;
    int mNumBlocks = 0;
    MemoryReport mMemory;
    std::unique_ptr<GemmRunner> mGemm;
    std::vector<std::variant<ResolvedLaunch, ResolvedGemm>> mProgram;
    CUdeviceptr mLogits = 0;
    CUdeviceptr mSelect = 0; ///< 0: the plan has no greedy pick
    PinnedMemory mHostSelect;
    bool mCudaGraphs = true;
    bool mProgrammaticLaunch = true;
    std::vector<std::size_t> mGraphSymbols;
    std::map<std::vector<std::int64_t>, cudaGraphExec_t> mGraphs;
    GraphStats mGraphStats;
    StepHostTimes mHostEager;
    StepHostTimes mHostGraphed;
    using Clock = std::chrono::steady_clock;
    Clock::time_point mMark;                  ///< the host-time laps' last mark
    StepInputs const* mStarted = nullptr;     ///< the step start() queued, until finish()
    StepHostTimes* mStartedHost = nullptr;    ///< the host times it counts in
    struct AlternativeChoice
    {
        int m = 0;
        int n = 0;
        int k = 0;
        std::string label;
        std::string report;
    };
    std::vector<AlternativeChoice> mAlternativeChoices;
    std::map<std::string, int> mShapeIds;                    ///< a GEMM shape's description -> its id
    std::map<std::pair<int, std::int64_t>, int> mChosen; ///< (GEMM shape id, M) -> choice (-1: cuBLASLt)
    /// (GEMM shape id, band of M, whether an alternative is preferred there) -> choice, where an
    /// alternative for many rows takes the band (chooseAt)
    std::map<std::tuple<int, std::int64_t, bool>, int> mBandChosen;
    /// GEMMs of at least this many rows run an alternative that takes them rather than cuBLASLt
    /// (0: cuBLASLt and the alternatives timed against each other at every M; nullopt: where the
    /// engine prefers an alternative, GemmAlternative::preferredFromM)
    std::optional<std::int64_t> mKernelsFrom;
    std::vector<std::vector<std::size_t>> mShapeMembers;  ///< GEMM shape id -> its GEMMs' places in mProgram
    StepInputs mPadded;
    cudaStream_t mStream = nullptr;
};

PlanExecutor::PlanExecutor(PlanSpec plan, std::vector<WeightData> const& weights, PlanExecutorOptions const& options)
    : mImpl(std::make_unique<Impl>(std::move(plan), weights, options))
{
}

PlanExecutor::~PlanExecutor() = default;

SizeType PlanExecutor::numBlocks() const
{
    return mImpl->numBlocks();
}

StepOutput PlanExecutor::forward(StepInputs const& step)
{
    return mImpl->forward(step);
}

void PlanExecutor::setCudaGraphs(bool on)
{
    mImpl->setCudaGraphs(on);
}

void PlanExecutor::setProgrammaticLaunch(bool on)
{
    mImpl->setProgrammaticLaunch(on);
}

bool PlanExecutor::programmaticLaunch() const
{
    return mImpl->programmaticLaunch();
}

void PlanExecutor::setFp8FastAccumulation(bool on)
{
    mImpl->setFp8FastAccumulation(on);
}

bool PlanExecutor::fp8FastAccumulation() const
{
    return mImpl->fp8FastAccumulation();
}

void PlanExecutor::setKernelsFromRows(std::optional<std::int64_t> rows)
{
    mImpl->setKernelsFromRows(rows);
}

std::optional<std::int64_t> PlanExecutor::kernelsFromRows() const
{
    return mImpl->kernelsFromRows();
}

bool PlanExecutor::cudaGraphs() const
{
    return mImpl->cudaGraphs();
}

int PlanExecutor::prepareGemmsAhead(std::int64_t maxBatchSize, std::int64_t maxNumTokens)
{
    return mImpl->prepareGemmsAhead(maxBatchSize, maxNumTokens);
}

int PlanExecutor::captureGraphs(std::int64_t maxBatchSize)
{
    return mImpl->captureGraphs(maxBatchSize);
}

GraphStats PlanExecutor::graphStats() const
{
    return mImpl->graphStats();
}

void PlanExecutor::start(StepInputs const& step, std::function<void()> const& beside)
{
    mImpl->start(step, beside);
}

StepOutput PlanExecutor::finish()
{
    return mImpl->finish();
}

std::pair<StepHostTimes, StepHostTimes> PlanExecutor::hostTimes() const
{
    return mImpl->hostTimes();
}

MemoryReport PlanExecutor::memory() const
{
    return mImpl->memory();
}

std::vector<GemmChoice> PlanExecutor::gemmChoices() const
{
    return mImpl->gemmChoices();
}

std::map<std::string, std::int64_t> PlanExecutor::residentPrograms() const
{
    return mImpl->residentPrograms();
}

std::string PlanExecutor::describe() const
{
    return mImpl->describe();
}

} // namespace kiln::gpu
