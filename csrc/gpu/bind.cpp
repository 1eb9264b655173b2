#include "gpu/bind.h"

#include "gpu/cuda_check.h"
#include "gpu/driver.h"
#include "gpu/expr.h"
#include "gpu/plan_executor.h"
#include "runtime/step_inputs.h"

#include <cuda_runtime_api.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace kiln::gpu
{
namespace
{

py::object field(py::dict const& d, char const* key, char const* where)
{
    if (!d.contains(key))
    {
        throw std::invalid_argument(std::string("engine kernels header: ") + where + " has no '" + key
            + "'; rebuild the engine with engine-build");
    }
    return d[key];
}

BufferRef toRef(py::dict const& d)
{
    BufferRef ref;
    if (d.contains("arena"))
    {
        ref.kind = BufferRef::Kind::Arena;
        ref.offset = d["arena"].cast<std::int64_t>();
    }
    else if (d.contains("input"))
    {
        ref.kind = BufferRef::Kind::Input;
        ref.name = d["input"].cast<std::string>();
    }
    else if (d.contains("weight"))
    {
        ref.kind = BufferRef::Kind::Weight;
        ref.name = d["weight"].cast<std::string>();
    }
    else if (d.contains("kv"))
    {
        ref.kind = BufferRef::Kind::Kv;
        ref.layer = d["kv"].cast<int>();
        ref.half = field(d, "half", "a kv reference").cast<int>();
    }
    else if (d.contains("scratch"))
    {
        ref.kind = BufferRef::Kind::Scratch;
        ref.name = d["scratch"].cast<std::string>();
        ref.offset = d.contains("offset") ? d["offset"].cast<std::int64_t>() : 0;
    }
    else if (d.contains("const"))
    {
        ref.kind = BufferRef::Kind::Const;
        ref.name = d["const"].cast<std::string>();
    }
    else
    {
        throw std::invalid_argument("engine kernels header: unknown buffer reference " + py::str(d).cast<std::string>());
    }
    return ref;
}

std::string bytesOf(py::handle blob)
{
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(blob).request();
    return std::string(static_cast<char const*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize));
}

LaunchStep toLaunch(py::dict const& s, std::string const& label)
{
    LaunchStep l;
    l.label = label;
    l.kernel = field(s, "kernel", "a launch").cast<std::string>();
    auto grid = field(s, "grid", "a launch").cast<std::vector<std::string>>();
    if (grid.size() != 3)
        throw std::invalid_argument("engine kernels header: a grid needs 3 dimensions");
    std::copy(grid.begin(), grid.end(), l.grid.begin());
    l.when = s["when"].is_none() ? std::string() : s["when"].cast<std::string>();
    if (s.contains("global_scratch"))
        l.globalScratch = s["global_scratch"].cast<std::string>();
    for (auto a : field(s, "args", "a launch").cast<py::list>())
    {
        auto d = a.cast<py::dict>();
        KernelArg arg;
        if (d.contains("i32"))
        {
            arg.kind = KernelArg::Kind::Int32;
            arg.expr = d["i32"].cast<std::string>();
        }
        else if (d.contains("f32"))
        {
            arg.kind = KernelArg::Kind::Float32;
            arg.value = d["f32"].cast<float>();
        }
        else
        {
            arg.ref = toRef(d);
        }
        l.args.push_back(std::move(arg));
    }
    return l;
}

PlanSpec toPlan(py::object const& engine)
{
    py::dict const h = engine.attr("kernels");
    if (h.empty())
    {
        throw std::invalid_argument("the engine has no GPU kernels (it was built without triton): rebuild it "
                                    "with triton installed (pip install triton) to run it on a GPU");
    }
    PlanSpec p;
    p.dtype = field(h, "dtype", "the header").cast<std::string>();
    auto limits = field(h, "limits", "the header").cast<py::dict>();
    p.maxNumTokens = field(limits, "max_num_tokens", "limits").cast<int>();
    p.maxBatchSize = field(limits, "max_batch_size", "limits").cast<int>();
    p.maxSeqLen = field(limits, "max_seq_len", "limits").cast<int>();
    p.maxBlocksPerSeq = field(limits, "max_blocks_per_seq", "limits").cast<int>();
    p.tokensPerBlock = field(limits, "tokens_per_block", "limits").cast<int>();
    p.arenaBytes = field(h, "arena_bytes", "the header").cast<std::int64_t>();
    auto kv = field(h, "kv_cache", "the header").cast<py::dict>();
    p.numLayers = field(kv, "num_layers", "kv_cache").cast<int>();
    p.numKvHeads = field(kv, "num_kv_heads", "kv_cache").cast<int>();
    p.headDim = field(kv, "head_dim", "kv_cache").cast<int>();
    p.kvDtype = field(kv, "dtype", "kv_cache").cast<std::string>();
    p.stepInputs = field(h, "step_inputs", "the header").cast<std::map<std::string, std::string>>();
    auto outputs = field(h, "outputs", "the header").cast<py::dict>();
    auto logits = field(outputs, "logits", "outputs").cast<py::dict>();
    p.logits = OutputSpec{toRef(field(logits, "ref", "logits").cast<py::dict>()),
        field(logits, "rows", "logits").cast<std::string>(), field(logits, "cols", "logits").cast<int>(),
        field(logits, "dtype", "logits").cast<std::string>()};
    if (h.contains("select") && !h["select"].is_none())
    {
        auto select = h["select"].cast<py::dict>();
        p.select = SelectSpec{
            toRef(field(select, "ref", "select").cast<py::dict>()), field(select, "capacity", "select").cast<int>()};
    }
    if (h.contains("resident"))
    {
        for (auto item : h["resident"].cast<py::list>())
        {
            auto pair = item.cast<py::list>();
            p.resident.emplace_back(pair[0].cast<std::string>(), pair[1].cast<std::string>());
        }
    }
    for (auto item : field(h, "derived", "the header").cast<py::list>())
    {
        auto pair = item.cast<py::list>();
        p.derived.emplace_back(pair[0].cast<std::string>(), pair[1].cast<std::string>());
    }
    p.scratch = field(h, "scratch", "the header").cast<std::map<std::string, std::vector<std::string>>>();
    if (h.contains("zeroed_scratch"))
        p.zeroedScratch = h["zeroed_scratch"].cast<std::vector<std::string>>();
    for (auto [name, table] : field(h, "constants", "the header").cast<py::dict>())
    {
        p.constants[name.cast<std::string>()] = table.cast<py::dict>()["values"].cast<std::vector<float>>();
    }
    for (auto [id, entry] : field(h, "kernels", "the header").cast<py::dict>())
    {
        KernelDesc desc;
        if (entry.cast<py::dict>().contains("min_sm"))
            desc.minSm = entry.cast<py::dict>()["min_sm"].cast<int>();
        for (auto [sm, meta] : field(entry.cast<py::dict>(), "sm", "a kernel").cast<py::dict>())
        {
            auto m = meta.cast<py::dict>();
            auto const blob = field(m, "blob", "a kernel binary").cast<std::string>();
            desc.bySm[std::stoi(sm.cast<std::string>())] = KernelBinary{field(m, "name", "a kernel").cast<std::string>(),
                bytesOf(engine.attr("blob")(blob)), field(m, "num_warps", "a kernel").cast<int>(),
                field(m, "shared", "a kernel").cast<int>(),
                field(m, "params", "a kernel").cast<std::vector<std::string>>(),
                field(m, "num_extra_params", "a kernel").cast<int>(),
                m.contains("pdl") && m["pdl"].cast<bool>(),
                m.contains("global_scratch_size") ? m["global_scratch_size"].cast<std::int64_t>() : 0};
        }
        p.kernels[id.cast<std::string>()] = std::move(desc);
    }
    for (auto item : field(h, "program", "the header").cast<py::list>())
    {
        auto s = item.cast<py::dict>();
        auto const kind = field(s, "kind", "a program step").cast<std::string>();
        std::string const label = s.contains("label") ? s["label"].cast<std::string>() : std::string();
        if (kind == "gemm")
        {
            GemmStep g;
            g.label = label;
            g.a = toRef(field(s, "a", "a gemm").cast<py::dict>());
            g.w = toRef(field(s, "w", "a gemm").cast<py::dict>());
            g.out = toRef(field(s, "out", "a gemm").cast<py::dict>());
            if (!s["bias"].is_none())
                g.bias = toRef(s["bias"].cast<py::dict>());
            if (s.contains("residual") && !s["residual"].is_none())
            {
                g.residual = toRef(s["residual"].cast<py::dict>());
                g.ldr = field(s, "ldr", "a gemm with a residual").cast<int>();
            }
            g.m = field(s, "m", "a gemm").cast<std::string>();
            g.n = field(s, "n", "a gemm").cast<int>();
            g.k = field(s, "k", "a gemm").cast<int>();
            g.lda = field(s, "lda", "a gemm").cast<int>();
            g.ldc = field(s, "ldc", "a gemm").cast<int>();
            g.dtype = field(s, "dtype", "a gemm").cast<std::string>();
            if (s.contains("in_dtype") && !s["in_dtype"].is_none())
            {
                g.inDtype = s["in_dtype"].cast<std::string>();
                g.aScale = toRef(field(s, "a_scale", "an FP8 gemm").cast<py::dict>());
                g.wScale = toRef(field(s, "w_scale", "an FP8 gemm").cast<py::dict>());
            }
            if (s.contains("alternatives"))
            {
                for (auto alt : s["alternatives"].cast<py::list>())
                {
                    auto a = alt.cast<py::dict>();
                    GemmAlternative alternative;
                    alternative.maxM = field(a, "max_m", "a gemm alternative").cast<int>();
                    if (a.contains("min_m"))
                        alternative.minM = a["min_m"].cast<int>();
                    if (a.contains("preferred_from_m"))
                        alternative.preferredFromM = a["preferred_from_m"].cast<int>();
                    for (auto step : field(a, "steps", "a gemm alternative").cast<py::list>())
                        alternative.steps.push_back(toLaunch(step.cast<py::dict>(), label));
                    g.alternatives.push_back(std::move(alternative));
                }
            }
            if (s.contains("prologue"))
                for (auto step : s["prologue"].cast<py::list>())
                    g.prologue.push_back(toLaunch(step.cast<py::dict>(), label));
            if (s.contains("epilogue"))
                for (auto step : s["epilogue"].cast<py::list>())
                    g.epilogue.push_back(toLaunch(step.cast<py::dict>(), label));
            p.program.emplace_back(std::move(g));
            continue;
        }
        LaunchStep l = toLaunch(s, label);
        p.program.emplace_back(std::move(l));
    }
    return p;
}

template <typename T>
std::vector<T> column(py::dict const& step, char const* key)
{
    if (!step.contains(key))
        throw std::invalid_argument(std::string("step has no '") + key + "'");
    auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(step[key]);
    if (!a)
        throw std::invalid_argument(std::string("step '") + key + "' is not an array of numbers");
    return std::vector<T>(a.data(), a.data() + a.size());
}

StepInputs toStep(py::dict const& step)
{
    StepInputs s;
    s.inputIds = column<std::int32_t>(step, "input_ids");
    s.positions = column<std::int32_t>(step, "positions");
    s.slotMapping = column<std::int64_t>(step, "slot_mapping");
    s.contextLens = column<std::int32_t>(step, "context_lens");
    s.queryStart = column<std::int32_t>(step, "query_start");
    s.lastTokenIndex = column<std::int32_t>(step, "last_token_index");
    auto tables = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>::ensure(step["block_tables"]);
    if (!tables || tables.ndim() != 2)
        throw std::invalid_argument("step 'block_tables' must be a 2-D array [B, MAXBLK]");
    s.blockTables.assign(tables.data(), tables.data() + tables.size());
    s.numSequences = static_cast<SizeType>(s.contextLens.size());
    s.maxBlocksPerSeq = static_cast<SizeType>(tables.shape(1));
    return s;
}

std::vector<WeightData> weightsOf(py::object const& engine)
{
    std::vector<WeightData> out;
    for (auto [name, tensor] : engine.attr("weights").cast<py::dict>())
    {
        if (!tensor.attr("is_contiguous")().cast<bool>() || tensor.attr("device").attr("type").cast<std::string>() != "cpu")
        {
            throw std::invalid_argument("weight " + name.cast<std::string>() + " is not a contiguous CPU tensor");
        }
        out.push_back(WeightData{name.cast<std::string>(),
            reinterpret_cast<void const*>(tensor.attr("data_ptr")().cast<std::uintptr_t>()),
            tensor.attr("numel")().cast<std::size_t>() * tensor.attr("element_size")().cast<std::size_t>()});
    }
    return out;
}

/// libcublasLt from the nvidia-cublas wheel, if this Python has one: tried after the loader's
/// own search (which finds the copy PyTorch already loaded, or the toolkit's).
std::string wheelCublasLt()
{
    try
    {
        py::object spec = py::module_::import("importlib.util").attr("find_spec")("nvidia");
        if (spec.is_none())
            return "";
        py::object glob = py::module_::import("glob").attr("glob");
        for (auto location : spec.attr("submodule_search_locations"))
        {
            for (char const* pattern : {"/cu13/lib/libcublasLt.so*", "/cublas/lib/libcublasLt.so*"})
            {
                py::list found = glob(location.cast<std::string>() + pattern);
                if (!found.empty())
                    return found[0].cast<std::string>();
            }
        }
    }
    catch (py::error_already_set const&)
    {
    }
    return "";
}

int deviceCount()
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess)
    {
        cudaGetLastError(); // no driver or no device: clear the sticky-free error and report none
        return 0;
    }
    return count;
}

/// Launches one cubin kernel synchronously (tests of the driver-API path).
void launchCubin(py::bytes cubin, std::string const& name, std::vector<unsigned> const& grid, int numWarps, int shared,
    py::list args, int numExtraParams)
{
    auto const& driver = DriverApi::get();
    std::string const image = cubin;
    KILN_CUDA_CHECK(cudaFree(nullptr)); // makes the primary context current
    CUmodule module = nullptr;
    driver.check(driver.moduleLoadData(&module, image.data()), "cuModuleLoadData");
    try
    {
        CUfunction function = nullptr;
        driver.check(driver.moduleGetFunction(&function, module, name.c_str()), "cuModuleGetFunction");
        if (shared > 48 * 1024)
            driver.check(driver.funcSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
                "cuFuncSetAttribute");
        std::vector<std::uint64_t> slots(args.size() + static_cast<std::size_t>(numExtraParams), 0);
        for (std::size_t i = 0; i < args.size(); ++i)
        {
            auto pair = args[i].cast<py::tuple>();
            auto const kind = pair[0].cast<std::string>();
            if (kind == "ptr")
                slots[i] = pair[1].cast<std::uint64_t>();
            else if (kind == "i32")
            {
                auto const v = pair[1].cast<std::int32_t>();
                std::memcpy(&slots[i], &v, sizeof(v));
            }
            else if (kind == "f32")
            {
                auto const v = pair[1].cast<float>();
                std::memcpy(&slots[i], &v, sizeof(v));
            }
            else
                throw std::invalid_argument("argument kind must be ptr, i32 or f32, not " + kind);
        }
        std::vector<void*> params;
        for (auto& slot : slots)
            params.push_back(&slot);
        if (grid.size() != 3)
            throw std::invalid_argument("grid needs 3 dimensions");
        driver.check(driver.launchKernel(function, grid[0], grid[1], grid[2], static_cast<unsigned>(32 * numWarps), 1, 1,
                         static_cast<unsigned>(shared), nullptr, params.data(), nullptr),
            "cuLaunchKernel");
        KILN_CUDA_CHECK(cudaDeviceSynchronize());
    }
    catch (...)
    {
        driver.moduleUnload(module);
        throw;
    }
    driver.check(driver.moduleUnload(module), "cuModuleUnload");
}

} // namespace

void bind(py::module_& m)
{
    py::class_<PlanExecutor, Backend, std::shared_ptr<PlanExecutor>>(m, "PlanExecutor",
        "The GPU backend: runs an engine's compiled plan on one GPU (docs/architecture.md, GPU plan executor).")
        .def(py::init(
                 [](py::object engine, double fraction, std::optional<int> numBlocks, int device, bool cudaGraphs,
                     bool programmaticLaunch)
                 {
                     PlanSpec plan = toPlan(engine);
                     std::vector<WeightData> weights = weightsOf(engine);
                     PlanExecutorOptions options{
                         device, fraction, numBlocks, wheelCublasLt(), cudaGraphs, programmaticLaunch};
                     py::gil_scoped_release release;
                     return std::make_shared<PlanExecutor>(std::move(plan), weights, options);
                 }),
            py::arg("engine"), py::arg("kv_cache_free_gpu_memory_fraction") = 0.9, py::arg("num_blocks") = py::none(),
            py::arg("device") = 0, py::arg("cuda_graphs") = true, py::arg("programmatic_launch") = true,
            "Loads `engine` (kiln.builder.engine.Engine, or any object with .kernels, .weights {name: contiguous "
            "CPU tensor} and .blob(key)) onto GPU `device`. cuda_graphs: run decode-only steps as CUDA graphs. "
            "programmatic_launch: let each kernel compiled for it start while the one before finishes.")
        .def_property_readonly("num_blocks", &PlanExecutor::numBlocks)
        .def(
            "forward",
            [](PlanExecutor& self, py::dict step)
            {
                StepInputs inputs = toStep(step);
                StepOutput result;
                {
                    py::gil_scoped_release release;
                    result = self.forward(inputs);
                }
                auto const rows = static_cast<py::ssize_t>(inputs.numSequences);
                auto const cols = rows > 0 ? static_cast<py::ssize_t>(result.logits.size()) / rows : 0;
                py::array_t<float> out({rows, cols});
                std::memcpy(out.mutable_data(), result.logits.data(), result.logits.size() * sizeof(float));
                return out;
            },
            py::arg("step"), "Runs one step (the ABI arrays as numpy); returns float32 logits [B, vocab].")
        .def(
            "run_step",
            [](PlanExecutor& self, py::dict step, std::vector<SizeType> logitRows)
            {
                StepInputs inputs = toStep(step);
                inputs.logitRows = std::move(logitRows);
                StepOutput result;
                {
                    py::gil_scoped_release release;
                    result = self.forward(inputs);
                }
                auto const rows = static_cast<py::ssize_t>(inputs.logitRows->size());
                auto const cols = rows > 0 ? static_cast<py::ssize_t>(result.logits.size()) / rows : 0;
                py::array_t<float> logits({rows, cols});
                if (!result.logits.empty())
                    std::memcpy(logits.mutable_data(), result.logits.data(), result.logits.size() * sizeof(float));
                py::dict out;
                out["tokens"] = py::array_t<std::int32_t>(static_cast<py::ssize_t>(result.tokens.size()), result.tokens.data());
                out["logprobs"] = py::array_t<float>(static_cast<py::ssize_t>(result.logProbs.size()), result.logProbs.data());
                out["logits"] = logits;
                return out;
            },
            py::arg("step"), py::arg("logit_rows"),
            "Runs one step as the executor does: {tokens, logprobs} of the greedy pick per row (empty when the "
            "engine has none) and logits [len(logit_rows), vocab] of the rows asked for.")
        .def_property("cuda_graphs", &PlanExecutor::cudaGraphs, &PlanExecutor::setCudaGraphs, "Whether decode-only steps run as CUDA graphs.")
        .def_property("programmatic_launch", &PlanExecutor::programmaticLaunch, &PlanExecutor::setProgrammaticLaunch,
            "Whether kernels compiled for it launch with programmatic stream serialization (setting it drops the "
            "captured graphs).")
        .def_property("fp8_fast_accumulation", &PlanExecutor::fp8FastAccumulation,
            &PlanExecutor::setFp8FastAccumulation,
            "Whether FP8 GEMMs run through cuBLASLt accumulate without promoting their partial sums to "
            "float32 along K (faster where compute-bound, less exact); setting it drops the captured graphs "
            "and GEMM choices.")
        .def_property("kernels_from_rows", &PlanExecutor::kernelsFromRows, &PlanExecutor::setKernelsFromRows,
            "None (the default): a GEMM runs a kernel of Kiln's own untimed against cuBLASLt where the engine "
            "prefers it (from the rows its plan gives), and the faster of the two is timed elsewhere; 0: timed at "
            "every M; N: from N rows a GEMM with a kernel of Kiln's own that takes them runs it (the fastest of "
            "them if several). Setting it drops the captured graphs and GEMM choices.")
        .def("prepare_gemms_ahead", &PlanExecutor::prepareGemmsAhead, py::arg("max_batch_size"),
            py::arg("max_num_tokens"),
            py::call_guard<py::gil_scoped_release>(),
            "Makes the cuBLASLt choices of GEMMs past Kiln's own alternatives at every decode batch bucket up to "
            "max_batch_size and every 256 tokens up to max_num_tokens, each run once so its kernel is loaded; "
            "returns how many.")
        .def("capture_graphs", &PlanExecutor::captureGraphs, py::arg("max_batch_size"),
            py::call_guard<py::gil_scoped_release>(),
            "Captures the CUDA graphs (and makes the GEMM choices) of greedy decode steps of every batch bucket up "
            "to max_batch_size whose launch shape is the same at any context length; returns how many.")
        .def("graph_stats",
            [](PlanExecutor const& self)
            {
                GraphStats const g = self.graphStats();
                py::dict d;
                d["captured"] = g.captured;
                d["replays"] = g.replays;
                d["eager_steps"] = g.eagerSteps;
                d["capture_s"] = g.captureSeconds;
                return d;
            })
        .def("host_times",
            [](PlanExecutor const& self)
            {
                auto const kind = [](StepHostTimes const& t)
                {
                    py::dict d;
                    d["steps"] = t.steps;
                    d["prepare_us"] = t.prepareMicros;
                    d["upload_us"] = t.uploadMicros;
                    d["choose_us"] = t.chooseMicros;
                    d["launch_us"] = t.launchMicros;
                    d["beside_us"] = t.besideMicros;
                    d["wait_us"] = t.waitMicros;
                    d["finish_us"] = t.finishMicros;
                    return d;
                };
                auto const [eager, graphed] = self.hostTimes();
                py::dict d;
                d["eager"] = kind(eager);
                d["graph"] = kind(graphed);
                return d;
            },
            "The host time of its steps so far by part, microseconds, for steps run launch by launch "
            "('eager') and as CUDA graphs ('graph'): each {steps, prepare_us, upload_us, choose_us, "
            "launch_us, beside_us, wait_us, finish_us}")
        .def("memory",
            [](PlanExecutor const& self)
            {
                MemoryReport const r = self.memory();
                py::dict d;
                d["weights"] = r.weightBytes;
                d["activations"] = r.arenaBytes;
                d["workspace"] = r.workspaceBytes;
                d["kv_cache"] = r.kvCacheBytes;
                d["free_before_kv_cache"] = r.freeBeforeKvBytes;
                d["total"] = r.totalBytes;
                return d;
            })
        .def("resident_programs", &PlanExecutor::residentPrograms,
            "{symbol: programs of its kernel this GPU runs at once}: the plan's resident symbols, "
            "fixed at load")
        .def("gemm_choices",
            [](PlanExecutor const& self)
            {
                py::list out;
                for (auto const& c : self.gemmChoices())
                {
                    py::dict d;
                    d["m"] = c.m;
                    d["n"] = c.n;
                    d["k"] = c.k;
                    d["dtype"] = c.dtype;
                    d["bias"] = c.bias;
                    d["algorithm"] = c.algorithm;
                    out.append(d);
                }
                return out;
            })
        .def("describe", &PlanExecutor::describe);

    auto gpu = m.def_submodule("gpu", "GPU plan executor internals, for tests and tools.");
    gpu.def(
        "eval_expr",
        [](std::string const& expr, std::map<std::string, std::int64_t> const& symbols)
        {
            SymbolTable table;
            std::vector<std::int64_t> values;
            for (auto const& [name, value] : symbols)
            {
                table.add(name);
                values.push_back(value);
            }
            return Expr::parse(expr, table).eval(values);
        },
        py::arg("expr"), py::arg("symbols"), "Evaluates a plan expression as the executor does.");
    gpu.def("device_count", &deviceCount, "CUDA devices visible (0 without a driver).");
    gpu.def("launch_cubin", &launchCubin, py::arg("cubin"), py::arg("name"), py::arg("grid"), py::arg("num_warps"),
        py::arg("shared"), py::arg("args"), py::arg("num_extra_params"),
        "Loads a cubin through the driver API and runs one kernel synchronously; args: [(\"ptr\"|\"i32\"|\"f32\", value)].");
}

} // namespace kiln::gpu
