#pragma once

#include "gpu/gemm.h"
#include "gpu/plan.h"
#include "runtime/backend.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln::gpu
{

/// @brief Where the GPU memory went at load.
struct MemoryReport
{
    std::size_t weightBytes = 0;
    std::size_t arenaBytes = 0;  ///< activations, step inputs, scratch, tables
    std::size_t workspaceBytes = 0;
    std::size_t kvCacheBytes = 0;
    std::size_t freeBeforeKvBytes = 0;
    std::size_t totalBytes = 0;
};

/// @brief How steps ran: CUDA graphs captured and replayed, steps run launch by launch.
struct GraphStats
{
    int captured = 0;
    std::int64_t replays = 0;
    std::int64_t eagerSteps = 0;
    double captureSeconds = 0.0; ///< host time capturing and instantiating, all graphs
};

/// @brief Host time a step spent in each part of start() and finish(), in microseconds over the steps so far
/// of one kind (launch by launch, or decode-only steps as CUDA graphs): what the GPU may wait on.
struct StepHostTimes
{
    std::int64_t steps = 0;
    double prepareMicros = 0; ///< the step checked, its symbols evaluated, padded to a graph bucket
    double uploadMicros = 0;  ///< step inputs staged in pinned memory, their copies enqueued
    double chooseMicros = 0;  ///< GEMM choices made for rows new to the executor (timed on the GPU)
    double launchMicros = 0;  ///< launches enqueued, or a graph's replay (its capture included)
    double besideMicros = 0;  ///< the caller's own work while the step's first launches ran (start's `beside`)
    double waitMicros = 0;    ///< copies back enqueued and the stream synchronised: the GPU's work
    double finishMicros = 0;  ///< outputs copied out of pinned memory
};

/// @brief The GPU backend: runs an engine's compiled plan (Triton cubins loaded through the
/// driver API, GEMMs through cuBLASLt) on one GPU, one step at a time, on its own stream.
///
/// At construction it picks the cubins for the device's SM, uploads the weights, allocates the
/// activation arena and sizes the paged KV cache from the memory left. forward() uploads the
/// step's ABI arrays, launches the program (a decode-only step as a CUDA graph) and returns the
/// greedy picks with the logits of the rows asked for (see StepOutput).
class PlanExecutor final : public Backend
{
public:
    /// @brief Loads `plan` with `weights` (host bytes, read during the call). Throws
    /// std::invalid_argument with one line when the engine cannot run here (no cubins for this
    /// SM, the model or its KV cache does not fit), std::runtime_error when CUDA fails.
    PlanExecutor(PlanSpec plan, std::vector<WeightData> const& weights, PlanExecutorOptions const& options);
    ~PlanExecutor() override;

    PlanExecutor(PlanExecutor const&) = delete;
    PlanExecutor& operator=(PlanExecutor const&) = delete;
    PlanExecutor(PlanExecutor&&) = delete;
    PlanExecutor& operator=(PlanExecutor&&) = delete;

    /// @brief Physical KV blocks in the cache.
    [[nodiscard]] SizeType numBlocks() const override;
    /// @brief Runs one step. Throws std::invalid_argument for a step outside the engine's
    /// limits, std::runtime_error for a CUDA failure.
    [[nodiscard]] StepOutput forward(StepInputs const& step) override;
    /// @brief Queues one step's work on the GPU and returns; `beside` runs once the GPU has work
    /// enough queued (see Backend::start).
    void start(StepInputs const& step, std::function<void()> const& beside) override;
    /// @brief Waits for the started step and returns its output (see Backend::finish).
    [[nodiscard]] StepOutput finish() override;
    /// @brief Turns CUDA graphs for decode steps on or off (captured graphs are kept).
    void setCudaGraphs(bool on);
    [[nodiscard]] bool cudaGraphs() const;
    /// @brief Turns programmatic dependent launch on or off; drops the captured graphs.
    void setProgrammaticLaunch(bool on);
    [[nodiscard]] bool programmaticLaunch() const;
    /// @brief FP8 GEMMs through cuBLASLt with fast accumulation (GemmRunner::setFp8FastAccumulation)
    /// or not (the default); a change drops the captured graphs and the GEMM choices.
    void setFp8FastAccumulation(bool on);
    [[nodiscard]] bool fp8FastAccumulation() const;
    /// @brief From `rows` rows, a GEMM for which the engine has a kernel of Kiln's own (an
    /// alternative that takes those rows) runs it rather than cuBLASLt, the fastest of them if
    /// several; 0: cuBLASLt and the alternatives are timed against each other at every M;
    /// nullopt (the default): the engine's own preferences (GemmAlternative::preferredFromM),
    /// timed elsewhere. A change drops the captured graphs and the GEMM choices.
    void setKernelsFromRows(std::optional<std::int64_t> rows);
    [[nodiscard]] std::optional<std::int64_t> kernelsFromRows() const;
    /// @brief Makes the cuBLASLt choices (the heuristic's) of GEMMs of more rows than Kiln's own
    /// alternatives take, at every decode batch bucket up to `maxBatchSize` and every 256 of a
    /// step's tokens up to `maxNumTokens`, running each once so its kernel is loaded (at load: a
    /// step meeting a new M otherwise waits for both); returns the GEMMs prepared.
    int prepareGemmsAhead(std::int64_t maxBatchSize, std::int64_t maxNumTokens);
    /// @brief Graphs captured and replayed so far.
    [[nodiscard]] GraphStats graphStats() const;
    /// @brief Captures, with their GEMM choices, the CUDA graphs of greedy decode steps of every
    /// batch bucket up to `maxBatchSize` whose launch shape is the same at any context length
    /// (at load: a step meeting a new shape otherwise waits for both); returns how many. Shapes
    /// that depend on the context (a split KV, few sequences over long contexts) are captured
    /// when first met, as are those of steps that return logits.
    int captureGraphs(std::int64_t maxBatchSize);
    /// @brief The steps' host time by part so far: {steps launch by launch, steps as graphs}.
    [[nodiscard]] std::pair<StepHostTimes, StepHostTimes> hostTimes() const;

    /// @brief Memory use as sized at load.
    [[nodiscard]] MemoryReport memory() const;
    /// @brief cuBLASLt's algorithm per GEMM shape and M so far.
    [[nodiscard]] std::vector<GemmChoice> gemmChoices() const;
    /// @brief The plan's resident symbols: {symbol, programs of its kernel this GPU runs at once}.
    [[nodiscard]] std::map<std::string, std::int64_t> residentPrograms() const;
    /// @brief Device, SM of the cubins in use, cuBLASLt version.
    [[nodiscard]] std::string describe() const;

private:
    class Impl;
    std::unique_ptr<Impl> mImpl;
};

} // namespace kiln::gpu
