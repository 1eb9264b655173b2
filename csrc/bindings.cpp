// kiln._core: the runtime core (KV cache manager, scheduler, sampler, executor) for Python.
// Names are snake_case; csrc/_core.pyi mirrors this file.
#include "py_backend.h"
#include "runtime/executor.h"
#include "runtime/kv_cache_manager.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"

#include <pybind11/native_enum.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>
#include <sstream>

#ifdef KILN_WITH_CUDA
#include "gpu/bind.h"
#endif

namespace py = pybind11;
using namespace py::literals;

namespace kiln
{
namespace
{
/// The policy named `name`; a bad name is a ValueError that lists the good ones.
CapacityPolicy policyNamed(std::string const& name)
{
    if (auto const policy = capacityPolicyNamed(name))
    {
        return *policy;
    }
    throw std::invalid_argument("capacity_scheduler_policy must be 'max_utilization' or 'guaranteed_no_evict', got '"
        + name + "'");
}

py::dict toDict(KvCacheStats const& s)
{
    return py::dict("total_blocks"_a = s.totalBlocks, "used_blocks"_a = s.usedBlocks, "free_blocks"_a = s.freeBlocks,
        "cached_blocks"_a = s.cachedBlocks, "looked_up_tokens"_a = s.lookedUpTokens,
        "reused_tokens"_a = s.reusedTokens, "hit_rate"_a = s.hitRate);
}

py::object toDict(std::optional<IterationStats> const& stats)
{
    if (!stats)
    {
        return py::none();
    }
    IterationStats const& s = *stats;
    return py::dict("iteration"_a = s.iteration, "num_scheduled_requests"_a = s.numScheduledRequests,
        "num_prefill_tokens"_a = s.numPrefillTokens, "num_decode_tokens"_a = s.numDecodeTokens,
        "num_waiting_requests"_a = s.numWaitingRequests, "num_running_requests"_a = s.numRunningRequests,
        "kv_used_blocks"_a = s.kvUsedBlocks, "kv_free_blocks"_a = s.kvFreeBlocks,
        "total_computed_prompt_tokens"_a = s.totalComputedPromptTokens, "total_reused_tokens"_a = s.totalReusedTokens,
        "total_preemptions"_a = s.totalPreemptions, "step_us"_a = s.stepMicros, "forward_us"_a = s.forwardMicros,
        "total_step_us"_a = s.totalStepMicros, "total_forward_us"_a = s.totalForwardMicros,
        "total_schedule_us"_a = s.totalScheduleMicros, "total_beside_us"_a = s.totalBesideMicros,
        "total_update_us"_a = s.totalUpdateMicros,
        "total_prefill_step_us"_a = s.totalPrefillStepMicros, "total_prefill_steps"_a = s.totalPrefillSteps,
        "total_decode_tokens"_a = s.totalDecodeTokens,
        "total_decode_only_context_tokens"_a = s.totalDecodeOnlyContextTokens,
        "total_prefill_step_decode_tokens"_a = s.totalPrefillStepDecodeTokens,
        "total_prefill_step_decode_context_tokens"_a = s.totalPrefillStepDecodeContextTokens,
        "total_prefill_step_sequences"_a = s.totalPrefillStepSequences,
        "total_prefill_step_prompt_context_tokens"_a = s.totalPrefillStepPromptContextTokens,
        "total_prefill_step_prompt_attention_pairs"_a = s.totalPrefillStepPromptAttentionPairs);
}

std::optional<std::chrono::milliseconds> toTimeout(std::optional<double> timeoutMs)
{
    if (!timeoutMs)
    {
        return std::nullopt;
    }
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(*timeoutMs, 0.0)));
}

/// Executors alive in this process, so an atexit hook can stop their threads while Python can
/// still hand them the GIL (a thread asking for it during finalization would be killed).
struct LiveExecutors
{
    std::mutex mutex;
    std::vector<std::weak_ptr<Executor>> executors;
};

LiveExecutors& liveExecutors()
{
    static auto* live = new LiveExecutors(); // leaked on purpose: outlives module teardown
    return *live;
}

std::shared_ptr<Executor> makeExecutor(ExecutorConfig const& config, py::object const& backend)
{
    std::shared_ptr<Backend> impl = py::isinstance<Backend>(backend) ? backend.cast<std::shared_ptr<Backend>>()
                                                                     : std::make_shared<PyBackend>(backend);
    // Joining the loop thread must not hold the GIL: the thread may be waiting for it in forward.
    auto executor = std::shared_ptr<Executor>(new Executor(config, std::move(impl)), [](Executor* e) {
        if (PyGILState_Check() != 0)
        {
            py::gil_scoped_release release;
            e->shutdown();
        }
        delete e;
    });
    LiveExecutors& live = liveExecutors();
    std::lock_guard<std::mutex> lock(live.mutex);
    live.executors.erase(std::remove_if(live.executors.begin(), live.executors.end(),
                             [](std::weak_ptr<Executor> const& w) { return w.expired(); }),
        live.executors.end());
    live.executors.push_back(executor);
    return executor;
}

void shutdownLiveExecutors()
{
    std::vector<std::shared_ptr<Executor>> executors;
    {
        LiveExecutors& live = liveExecutors();
        std::lock_guard<std::mutex> lock(live.mutex);
        for (auto const& weak : live.executors)
        {
            if (auto executor = weak.lock())
            {
                executors.push_back(std::move(executor));
            }
        }
    }
    {
        py::gil_scoped_release release;
        for (auto const& executor : executors)
        {
            executor->shutdown();
        }
    }
}

/// Per position, its (token, log-probability) pairs, as Python reads them.
std::vector<std::vector<std::pair<TokenIdType, float>>> tokenLogProbPairs(
    std::vector<std::vector<TokenLogProb>> const& positions)
{
    std::vector<std::vector<std::pair<TokenIdType, float>>> out;
    out.reserve(positions.size());
    for (auto const& position : positions)
    {
        auto& row = out.emplace_back();
        for (TokenLogProb const& t : position)
        {
            row.emplace_back(t.token, t.logProb);
        }
    }
    return out;
}

template <typename T>
std::string reprOf(char const* name, T const& fields)
{
    std::ostringstream os;
    os << name << "(" << fields << ")";
    return os.str();
}

void bindConfigs(py::module_& m)
{
    py::class_<SamplingConfig>(m, "SamplingConfig", "How one request picks its tokens; temperature 0 = greedy.")
        .def(py::init([](float temperature, SizeType topK, float topP, float minP, float repetitionPenalty,
                          float presencePenalty, float frequencyPenalty, std::optional<std::uint64_t> seed,
                          SizeType minTokens, std::map<TokenIdType, float> const& logitBias,
                          std::vector<TokenIdType> allowedTokenIds, SizeType beamWidth, float lengthPenalty,
                          SizeType earlyStopping) {
            return SamplingConfig{temperature, topK, topP, minP, repetitionPenalty, presencePenalty, frequencyPenalty,
                seed, minTokens, {logitBias.begin(), logitBias.end()}, std::move(allowedTokenIds), beamWidth,
                lengthPenalty, earlyStopping};
        }),
            py::kw_only(), "temperature"_a = 1.0F, "top_k"_a = 0, "top_p"_a = 1.0F, "min_p"_a = 0.0F,
            "repetition_penalty"_a = 1.0F, "presence_penalty"_a = 0.0F, "frequency_penalty"_a = 0.0F,
            "seed"_a = py::none(), "min_tokens"_a = 0, "logit_bias"_a = std::map<TokenIdType, float>(),
            "allowed_token_ids"_a = std::vector<TokenIdType>(), "beam_width"_a = 1, "length_penalty"_a = 1.0F,
            "early_stopping"_a = 1)
        .def_readwrite("temperature", &SamplingConfig::temperature)
        .def_readwrite("top_k", &SamplingConfig::topK)
        .def_readwrite("top_p", &SamplingConfig::topP)
        .def_readwrite("min_p", &SamplingConfig::minP)
        .def_readwrite("repetition_penalty", &SamplingConfig::repetitionPenalty)
        .def_readwrite("presence_penalty", &SamplingConfig::presencePenalty)
        .def_readwrite("frequency_penalty", &SamplingConfig::frequencyPenalty)
        .def_readwrite("seed", &SamplingConfig::seed)
        .def_readwrite("min_tokens", &SamplingConfig::minTokens)
        .def_property(
            "logit_bias",
            [](SamplingConfig const& c) { return std::map<TokenIdType, float>(c.logitBias.begin(), c.logitBias.end()); },
            [](SamplingConfig& c, std::map<TokenIdType, float> const& bias) { c.logitBias.assign(bias.begin(), bias.end()); })
        .def_readwrite("allowed_token_ids", &SamplingConfig::allowedTokenIds)
        .def_readwrite("beam_width", &SamplingConfig::beamWidth)
        .def_readwrite("length_penalty", &SamplingConfig::lengthPenalty)
        .def_readwrite("early_stopping", &SamplingConfig::earlyStopping)
        .def("validate", &SamplingConfig::validate, "The problem with these values (one line), or None.")
        .def("__repr__", [](SamplingConfig const& c) {
            std::ostringstream os;
            os << "temperature=" << c.temperature << ", top_k=" << c.topK << ", top_p=" << c.topP
               << ", min_p=" << c.minP << ", repetition_penalty=" << c.repetitionPenalty
               << ", presence_penalty=" << c.presencePenalty << ", frequency_penalty=" << c.frequencyPenalty
               << ", seed=" << (c.seed ? std::to_string(*c.seed) : "None") << ", min_tokens=" << c.minTokens
               << ", logit_bias=" << c.logitBias.size() << " tokens, allowed_token_ids=" << c.allowedTokenIds.size()
               << " tokens";
            if (c.beamWidth > 1)
            {
                os << ", beam_width=" << c.beamWidth << ", length_penalty=" << c.lengthPenalty
                   << ", early_stopping=" << c.earlyStopping;
            }
            return reprOf("SamplingConfig", os.str());
        });

    py::class_<ExecutorConfig>(m, "ExecutorConfig", "Limits and cache shape; num_blocks comes from the backend.")
        .def(py::init([](SizeType vocabSize, SizeType maxBatchSize, SizeType maxNumTokens, SizeType maxSeqLen,
                          SizeType tokensPerBlock, bool enableKvCacheReuse, std::string const& policy) {
            return ExecutorConfig{maxBatchSize, maxNumTokens, maxSeqLen, tokensPerBlock, vocabSize, enableKvCacheReuse,
                policyNamed(policy)};
        }),
            py::kw_only(), "vocab_size"_a, "max_batch_size"_a = 8, "max_num_tokens"_a = 512, "max_seq_len"_a = 2048,
            "tokens_per_block"_a = 16, "enable_kv_cache_reuse"_a = true,
            "capacity_scheduler_policy"_a = "max_utilization")
        .def_readwrite("max_batch_size", &ExecutorConfig::maxBatchSize)
        .def_readwrite("max_num_tokens", &ExecutorConfig::maxNumTokens)
        .def_readwrite("max_seq_len", &ExecutorConfig::maxSeqLen)
        .def_readwrite("tokens_per_block", &ExecutorConfig::tokensPerBlock)
        .def_readwrite("vocab_size", &ExecutorConfig::vocabSize)
        .def_readwrite("enable_kv_cache_reuse", &ExecutorConfig::enableKvCacheReuse)
        .def_property(
            "capacity_scheduler_policy", [](ExecutorConfig const& c) { return capacityPolicyName(c.capacityPolicy); },
            [](ExecutorConfig& c, std::string const& name) { c.capacityPolicy = policyNamed(name); })
        .def_property_readonly("max_blocks_per_seq", &ExecutorConfig::maxBlocksPerSeq)
        .def("validate", &ExecutorConfig::validate, "The problem with these values (one line), or None.");
}

void bindRequests(py::module_& m)
{
    py::native_enum<FinishReason>(m, "FinishReason", "enum.Enum", "Why a request stopped.")
        .value("NOT_FINISHED", FinishReason::kNotFinished)
        .value("END_ID", FinishReason::kEndId)
        .value("STOP_WORDS", FinishReason::kStopWords)
        .value("LENGTH", FinishReason::kLength)
        .value("CANCELLED", FinishReason::kCancelled)
        .value("ERROR", FinishReason::kError)
        .finalize();

    py::class_<TokenTable, std::shared_ptr<TokenTable>>(
        m, "TokenTable", "The bytes of each token id of a vocabulary (b'' for one never picked inside JSON).")
        .def(py::init([](std::vector<py::bytes> const& bytes) {
            std::vector<std::string> values;
            values.reserve(bytes.size());
            for (py::bytes const& b : bytes)
            {
                values.emplace_back(b);
            }
            return std::make_shared<TokenTable>(std::move(values));
        }),
            "bytes"_a)
        .def("__len__", [](TokenTable const& t) { return t.bytes.size(); })
        .def("__getitem__", [](TokenTable const& t, std::size_t i) {
            if (i >= t.bytes.size())
            {
                throw py::index_error("token id " + std::to_string(i) + " is past the table's "
                    + std::to_string(t.bytes.size()) + " entries");
            }
            return py::bytes(t.bytes[i]);
        });

    py::class_<JsonSchemaNode>(m, "JsonSchemaNode",
        "One node of a compiled JSON schema (kiln.runtime.json_schema.compile_schema makes them).")
        .def(py::init<>())
        .def_readwrite("kinds", &JsonSchemaNode::kinds)
        .def_readwrite("names", &JsonSchemaNode::names)
        .def_readwrite("properties", &JsonSchemaNode::properties)
        .def_readwrite("required", &JsonSchemaNode::required)
        .def_readwrite("additional", &JsonSchemaNode::additional)
        .def_readwrite("items", &JsonSchemaNode::items)
        .def_readwrite("min_properties", &JsonSchemaNode::minProperties)
        .def_readwrite("max_properties", &JsonSchemaNode::maxProperties)
        .def_readwrite("min_items", &JsonSchemaNode::minItems)
        .def_readwrite("max_items", &JsonSchemaNode::maxItems)
        .def_readwrite("min_length", &JsonSchemaNode::minLength)
        .def_readwrite("max_length", &JsonSchemaNode::maxLength)
        .def_readwrite("minimum", &JsonSchemaNode::minimum)
        .def_readwrite("maximum", &JsonSchemaNode::maximum)
        .def_property_readonly_static("MAX_BOUND", [](py::object const&) { return JsonSchemaNode::kMaxBound; })
        .def_readwrite("literals", &JsonSchemaNode::literals)
        .def_readwrite("any_of", &JsonSchemaNode::anyOf)
        .def_property_readonly_static("ANY", [](py::object const&) { return JsonSchemaNode::kAny; })
        .def_property_readonly_static("NONE", [](py::object const&) { return JsonSchemaNode::kNone; })
        .def_property_readonly_static(
            "MAX_PROPERTIES", [](py::object const&) { return JsonSchemaNode::kMaxProperties; });

    py::class_<JsonSchema, std::shared_ptr<JsonSchema>>(m, "JsonSchema",
        "A compiled JSON schema: node 0 is the top-level value's (an object or an array).")
        .def(py::init<std::vector<JsonSchemaNode>>(), "nodes"_a)
        .def("__len__", [](JsonSchema const& s) { return s.nodes.size(); });

    py::class_<RegexDfa, std::shared_ptr<RegexDfa>>(m, "RegexDfa",
        "A pattern's automaton over UTF-8 bytes (kiln.runtime.regex.compile_regex makes one); state 0 starts.")
        .def(py::init<std::vector<std::int32_t>, std::vector<bool>>(), "next"_a, "accepting"_a)
        .def_property_readonly("num_states", &RegexDfa::numStates)
        .def(
            "walk", [](RegexDfa const& d, std::int32_t state, py::bytes const& b) { return d.walk(state, std::string_view(b)); },
            "state"_a, "bytes"_a, "The state after the bytes, or -1 (no match can follow).")
        .def("accepting", &RegexDfa::accepting, "state"_a)
        .def("closed", &RegexDfa::closed, "state"_a)
        .def(
            "tokens", [](RegexDfa const& d, std::int32_t state, TokenTable const& table, SizeType vocab) { return d.tokens(state, table, vocab); },
            "state"_a, "table"_a, "vocab_size"_a, "The tokens whose bytes keep a match reachable from the state.");

    py::class_<Grammar, std::shared_ptr<Grammar>>(m, "Grammar",
        "A context-free grammar over UTF-8 bytes (kiln.runtime.grammar.compile_grammar makes one); a state is "
        "the list of parse stacks that fit the text read so far.")
        .def(py::init([](std::vector<std::vector<Grammar::Alternative>> rules, std::vector<py::bytes> const& byteSets) {
            std::vector<std::string> sets(byteSets.begin(), byteSets.end());
            return std::make_shared<Grammar>(std::move(rules), sets);
        }),
            "rules"_a, "byte_sets"_a)
        .def_property_readonly("num_rules", &Grammar::numRules)
        .def("start", &Grammar::start, "The state before any text.")
        .def(
            "advance", [](Grammar const& g, Grammar::State const& state, py::bytes const& b) {
                return g.advance(state, std::string_view(b));
            },
            "state"_a, "bytes"_a, "The state after the bytes ([]: no sentence can follow).")
        .def_static("accepting", &Grammar::accepting, "state"_a, "Whether the text read so far is a sentence.")
        .def_static("closed", &Grammar::closed, "state"_a, "Whether nothing may follow the text read so far.")
        .def_static("left_recursive", &Grammar::leftRecursive, "rules"_a,
            "A rule that can begin with itself, found depth first from rule 0; -1 if none.")
        .def(
            "tokens",
            [](Grammar const& g, Grammar::State const& state, TokenTable const& table, SizeType vocab) {
                return g.tokens(state, table, vocab);
            },
            "state"_a, "table"_a, "vocab_size"_a, "The tokens whose bytes keep a sentence reachable from the state.")
        .def_property_readonly_static("MAX_STACKS", [](py::object const&) { return Grammar::kMaxStacks; });

    py::class_<JsonObjectPrefix>(m, "JsonObjectPrefix",
        "Whether a text read byte by byte can still grow into one JSON object (with a schema: one "
        "JSON value valid against it), and whether it is one.")
        .def(py::init([](std::shared_ptr<JsonSchema> const& schema) { return JsonObjectPrefix(schema.get()); }),
            "schema"_a = std::shared_ptr<JsonSchema>(), py::keep_alive<1, 2>())
        .def(
            "feed", [](JsonObjectPrefix& s, py::bytes const& b) { return s.feed(std::string_view(b)); }, "bytes"_a,
            "Reads the bytes; False as soon as one cannot continue the JSON output (the state is then spent).")
        .def_property_readonly("complete", &JsonObjectPrefix::complete)
        .def("copy", [](JsonObjectPrefix const& s) { return s; }, py::keep_alive<0, 1>());

    py::class_<Request>(m, "Request", "One generation request.")
        .def(py::init([](std::vector<TokenIdType> inputTokenIds, SizeType maxNewTokens, SamplingConfig samplingConfig,
                          TokenIdType endId, TokenIdType padId, std::vector<std::vector<TokenIdType>> stopWords,
                          bool streaming, bool returnLogProbs, SizeType priority, SizeType numTopLogProbs,
                          std::vector<std::vector<TokenIdType>> badWords,
                          std::vector<std::vector<TokenIdType>> choices, bool jsonObject,
                          std::shared_ptr<TokenTable> tokenTable, std::shared_ptr<JsonSchema> jsonSchema,
                          std::optional<SizeType> promptLogProbs, std::shared_ptr<RegexDfa> regex,
                          std::shared_ptr<Grammar> grammar) {
            return Request{std::move(inputTokenIds), maxNewTokens, samplingConfig, endId, padId, std::move(stopWords),
                streaming, returnLogProbs, priority, numTopLogProbs, std::move(badWords), std::move(choices),
                jsonObject, std::move(tokenTable), std::move(jsonSchema), promptLogProbs, std::move(regex),
                std::move(grammar)};
        }),
            "input_token_ids"_a, py::kw_only(), "max_new_tokens"_a = 16, "sampling_config"_a = SamplingConfig(),
            "end_id"_a = -1, "pad_id"_a = -1, "stop_words"_a = std::vector<std::vector<TokenIdType>>(),
            "streaming"_a = false, "return_log_probs"_a = false, "priority"_a = 0, "num_top_log_probs"_a = 0,
            "bad_words"_a = std::vector<std::vector<TokenIdType>>(),
            "choices"_a = std::vector<std::vector<TokenIdType>>(), "json_object"_a = false,
            "token_table"_a = std::shared_ptr<TokenTable>(), "json_schema"_a = std::shared_ptr<JsonSchema>(),
            "prompt_log_probs"_a = std::optional<SizeType>(), "regex"_a = std::shared_ptr<RegexDfa>(),
            "grammar"_a = std::shared_ptr<Grammar>())
        .def_readwrite("input_token_ids", &Request::inputTokenIds)
        .def_readwrite("max_new_tokens", &Request::maxNewTokens)
        .def_readwrite("sampling_config", &Request::samplingConfig)
        .def_readwrite("end_id", &Request::endId)
        .def_readwrite("pad_id", &Request::padId)
        .def_readwrite("stop_words", &Request::stopWords)
        .def_readwrite("streaming", &Request::streaming)
        .def_readwrite("return_log_probs", &Request::returnLogProbs)
        .def_readwrite("priority", &Request::priority)
        .def_readwrite("num_top_log_probs", &Request::numTopLogProbs)
        .def_readwrite("bad_words", &Request::badWords)
        .def_readwrite("choices", &Request::choices)
        .def_readwrite("json_object", &Request::jsonObject)
        .def_readwrite("prompt_log_probs", &Request::promptLogProbs,
            "None, or k: each prompt token's log-probability after the first, with the k most likely tokens there")
        .def_property(
            "token_table", [](Request const& r) { return std::const_pointer_cast<TokenTable>(r.tokenTable); },
            [](Request& r, std::shared_ptr<TokenTable> table) { r.tokenTable = std::move(table); })
        .def_property(
            "json_schema", [](Request const& r) { return std::const_pointer_cast<JsonSchema>(r.jsonSchema); },
            [](Request& r, std::shared_ptr<JsonSchema> schema) { r.jsonSchema = std::move(schema); })
        .def_property(
            "regex", [](Request const& r) { return std::const_pointer_cast<RegexDfa>(r.regex); },
            [](Request& r, std::shared_ptr<RegexDfa> regex) { r.regex = std::move(regex); })
        .def_property(
            "grammar", [](Request const& r) { return std::const_pointer_cast<Grammar>(r.grammar); },
            [](Request& r, std::shared_ptr<Grammar> grammar) { r.grammar = std::move(grammar); });

    py::class_<BeamHypothesis>(m, "Beam", "One hypothesis of a beam search.")
        .def_readonly("tokens", &BeamHypothesis::tokens, "Generated tokens, the end id or stop word included.")
        .def_readonly("log_probs", &BeamHypothesis::logProbs, "Each token's log-probability.")
        .def_readonly("cum_log_prob", &BeamHypothesis::cumLogProb, "Their sum.")
        .def_readonly("score", &BeamHypothesis::score, "cum_log_prob / len(tokens) ** length_penalty: the ranking.")
        .def_readonly("finished", &BeamHypothesis::finished)
        .def_readonly("finish_reason", &BeamHypothesis::reason, "How it ends: END_ID, STOP_WORDS or LENGTH.")
        .def("__repr__", [](BeamHypothesis const& b) {
            std::ostringstream os;
            os << "num_tokens=" << b.tokens.size() << ", cum_log_prob=" << b.cumLogProb << ", score=" << b.score;
            return reprOf("Beam", os.str());
        });

    py::class_<Response>(m, "Response", "Some or all new tokens of a request.")
        .def_readonly("request_id", &Response::requestId)
        .def_readonly("output_token_ids", &Response::outputTokenIds)
        .def_readonly("log_probs", &Response::logProbs)
        .def_readonly("is_final", &Response::isFinal)
        .def_readonly("prompt_log_probs", &Response::promptLogProbs,
            "In the first response, when asked for: the log-probability of each prompt token after the first.")
        .def_readonly("beams", &Response::beams,
            "With beam search, in the final response of a search that ended: its beam_width hypotheses, best first.")
        .def_readonly("prompt_ranks", &Response::promptRanks,
            "Beside prompt_log_probs: each of those tokens' rank there (1 + the tokens more likely).")
        .def_property_readonly("prompt_top_log_probs",
            [](Response const& r) { return tokenLogProbPairs(r.promptTopLogProbs); },
            "In the first response, when asked for with k > 0: per prompt token after the first, the k most "
            "likely (token, log-probability) pairs there.")
        .def_readonly("finish_reason", &Response::finishReason)
        .def_readonly("error_message", &Response::errorMessage)
        .def_property_readonly("top_log_probs", [](Response const& r) { return tokenLogProbPairs(r.topLogProbs); },
            "Per output token, when asked for: the most likely (token, log-probability) pairs there.")
        .def_property_readonly("has_error", [](Response const& r) { return r.finishReason == FinishReason::kError; })
        .def("__repr__", [](Response const& r) {
            std::ostringstream os;
            os << "request_id=" << r.requestId << ", num_tokens=" << r.outputTokenIds.size()
               << ", is_final=" << (r.isFinal ? "True" : "False") << ", finish_reason=" << toString(r.finishReason);
            if (!r.errorMessage.empty())
            {
                os << ", error_message='" << r.errorMessage << "'";
            }
            return reprOf("Response", os.str());
        });
}

void bindCacheAndScheduler(py::module_& m)
{
    py::class_<KvCacheManager>(m, "KvCacheManager", "Paged KV block tables with prefix reuse (metadata only).")
        .def(py::init([](SizeType numBlocks, SizeType tokensPerBlock, bool enableReuse) {
            return std::make_unique<KvCacheManager>(KvCacheConfig{numBlocks, tokensPerBlock, enableReuse});
        }),
            "num_blocks"_a, "tokens_per_block"_a, "enable_reuse"_a = true)
        .def_property_readonly("num_blocks", &KvCacheManager::numBlocks)
        .def_property_readonly("tokens_per_block", &KvCacheManager::tokensPerBlock)
        .def_property_readonly("num_free_blocks", &KvCacheManager::numFreeBlocks)
        .def("num_reusable_tokens", &KvCacheManager::numReusableTokens, "tokens"_a)
        .def("can_add_sequence", &KvCacheManager::canAddSequence, "tokens"_a, "num_tokens"_a)
        .def("add_sequence", &KvCacheManager::addSequence, "request_id"_a, "tokens"_a, "num_tokens"_a)
        .def("can_allocate", &KvCacheManager::canAllocate, "request_id"_a, "num_tokens"_a)
        .def("token_capacity", &KvCacheManager::tokenCapacity, "request_id"_a)
        .def("allocate", &KvCacheManager::allocate, "request_id"_a, "num_tokens"_a)
        .def("cache_computed_blocks", &KvCacheManager::cacheComputedBlocks, "request_id"_a, "tokens"_a,
            "num_computed_tokens"_a)
        .def("remove_sequence", &KvCacheManager::removeSequence, "request_id"_a)
        .def("has_sequence", &KvCacheManager::hasSequence, "request_id"_a)
        .def("block_ids", &KvCacheManager::blockIds, "request_id"_a)
        .def("free_block_ids", &KvCacheManager::freeBlockIds)
        .def("reset_prefix_cache", &KvCacheManager::resetPrefixCache)
        .def("stats", [](KvCacheManager const& kv) { return toDict(kv.stats()); });

    py::class_<Sequence>(m, "Sequence", "Scheduling state of one request.")
        .def_readonly("id", &Sequence::id)
        .def_readonly("tokens", &Sequence::tokens)
        .def_readonly("num_prompt_tokens", &Sequence::numPromptTokens)
        .def_readonly("num_computed_tokens", &Sequence::numComputedTokens)
        .def_readonly("max_new_tokens", &Sequence::maxNewTokens)
        .def_readonly("priority", &Sequence::priority)
        .def_readonly("num_preemptions", &Sequence::numPreemptions);

    py::class_<ScheduledSequence>(m, "ScheduledSequence", "One sequence's share of a step.")
        .def_readonly("id", &ScheduledSequence::id)
        .def_readonly("num_tokens", &ScheduledSequence::numTokens)
        .def_readonly("start_position", &ScheduledSequence::startPosition)
        .def_readonly("is_decode", &ScheduledSequence::isDecode)
        .def_readonly("samples_next_token", &ScheduledSequence::samplesNextToken)
        .def("__repr__", [](ScheduledSequence const& s) {
            return "ScheduledSequence(id=" + std::to_string(s.id) + ", num_tokens=" + std::to_string(s.numTokens) + ")";
        });

    py::class_<SchedulerOutput>(m, "SchedulerOutput", "What the scheduler decided for one step.")
        .def_readonly("sequences", &SchedulerOutput::sequences)
        .def_readonly("preempted", &SchedulerOutput::preempted)
        .def_readonly("num_prefill_tokens", &SchedulerOutput::numPrefillTokens)
        .def_readonly("num_decode_tokens", &SchedulerOutput::numDecodeTokens)
        .def("empty", &SchedulerOutput::empty);

    py::class_<Scheduler>(m, "Scheduler", "Token-budget iteration-level batching over a KvCacheManager.")
        .def(py::init([](KvCacheManager& kvCache, SizeType maxBatchSize, SizeType maxNumTokens, SizeType maxSeqLen,
                          std::string const& policy) {
            return std::make_unique<Scheduler>(
                SchedulerConfig{maxBatchSize, maxNumTokens, maxSeqLen, policyNamed(policy)}, kvCache);
        }),
            "kv_cache"_a, py::kw_only(), "max_batch_size"_a, "max_num_tokens"_a, "max_seq_len"_a,
            "capacity_scheduler_policy"_a = "max_utilization", py::keep_alive<1, 2>())
        .def("check_fits", &Scheduler::checkFits, "num_prompt_tokens"_a, "max_new_tokens"_a)
        .def("add_request", &Scheduler::addRequest, "request_id"_a, "prompt"_a, "max_new_tokens"_a, "priority"_a = 0,
            "stepwise_prompt"_a = false, "arrival"_a = py::none())
        .def("schedule", &Scheduler::schedule)
        .def("update_computed", &Scheduler::updateComputed, "output"_a)
        .def("append_token", &Scheduler::appendToken, "request_id"_a, "token"_a)
        .def("remove_request", &Scheduler::removeRequest, "request_id"_a)
        .def("sequence", [](Scheduler const& s, IdType id) -> std::optional<Sequence> {
            Sequence const* seq = s.find(id);
            return seq != nullptr ? std::optional<Sequence>(*seq) : std::nullopt;
        }, "request_id"_a)
        .def("waiting_ids", &Scheduler::waitingIds)
        .def("running_ids", &Scheduler::runningIds)
        .def("has_unfinished", &Scheduler::hasUnfinished)
        .def_property_readonly("num_preemptions", &Scheduler::numPreemptions);
}

/// A Sampler with its own generator, so Python can draw like one request does.
struct SeededSampler
{
    Sampler sampler;
    std::mt19937_64 rng;
};

void bindSampler(py::module_& m)
{
    m.def("apply_penalties", [](std::vector<float> logits, SamplingConfig const& config,
                                 std::vector<TokenIdType> const& tokens, SizeType numPromptTokens) {
        applyPenalties(logits, config, tokens, numPromptTokens);
        return logits;
    }, "logits"_a, "config"_a, "tokens"_a, "num_prompt_tokens"_a);
    m.def("apply_temperature_and_filters", [](std::vector<float> logits, SamplingConfig const& config) {
        applyTemperatureAndFilters(logits, config);
        return logits;
    }, "logits"_a, "config"_a);

    py::class_<SeededSampler>(m, "Sampler", "The executor's CPU sampler with one request's generator.")
        .def(py::init([](SizeType vocabSize, std::uint64_t seed) {
            return SeededSampler{Sampler(vocabSize), std::mt19937_64(seed)};
        }), "vocab_size"_a, "seed"_a = 0)
        .def("sample", [](SeededSampler& s, std::vector<float> const& logits, SamplingConfig const& config,
                          std::vector<TokenIdType> const& tokens, std::optional<SizeType> numPromptTokens) {
            if (static_cast<SizeType>(logits.size()) != s.sampler.vocabSize())
            {
                throw std::invalid_argument("expected " + std::to_string(s.sampler.vocabSize()) + " logits, got "
                    + std::to_string(logits.size()));
            }
            SampleResult const r = s.sampler.sample(logits.data(), config, tokens,
                numPromptTokens.value_or(static_cast<SizeType>(tokens.size())), s.rng);
            return py::make_tuple(r.token, r.logProb);
        }, "logits"_a, "config"_a, "tokens"_a = std::vector<TokenIdType>(), "num_prompt_tokens"_a = py::none());
}

void bindExecutor(py::module_& m)
{
    // C++ backends (the GPU plan executor) derive from this; Python backends are duck-typed.
    py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend", "Base of the backends written in C++.")
        .def_property_readonly("num_blocks", &Backend::numBlocks);

    using Ms = std::optional<double>;
    py::class_<Executor, std::shared_ptr<Executor>>(m, "Executor", "Inflight-batching executor over a backend.")
        .def(py::init(&makeExecutor), "config"_a, "backend"_a)
        .def("enqueue_request", &Executor::enqueueRequest, "request"_a, py::call_guard<py::gil_scoped_release>())
        .def("enqueue_requests", &Executor::enqueueRequests, "requests"_a, py::call_guard<py::gil_scoped_release>())
        .def("await_responses", [](Executor& e, std::optional<IdType> id, Ms timeoutMs) {
            py::gil_scoped_release release;
            return id ? e.awaitResponses(*id, toTimeout(timeoutMs)) : e.awaitResponses(toTimeout(timeoutMs));
        }, "request_id"_a = py::none(), py::kw_only(), "timeout_ms"_a = py::none())
        .def("cancel_request", &Executor::cancelRequest, "request_id"_a, py::call_guard<py::gil_scoped_release>())
        .def("shutdown", &Executor::shutdown, py::call_guard<py::gil_scoped_release>())
        .def("pause", &Executor::pause, py::call_guard<py::gil_scoped_release>())
        .def("resume", &Executor::resume, py::call_guard<py::gil_scoped_release>())
        .def("get_latest_iteration_stats", [](Executor const& e) { return toDict(e.getLatestIterationStats()); })
        .def("get_kv_cache_stats", [](Executor const& e) { return toDict(e.getKvCacheStats()); })
        .def_property_readonly("config", &Executor::getConfig)
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](Executor& e, py::args const&) {
            py::gil_scoped_release release;
            e.shutdown();
        });
}

void translateInvalidArgument(std::exception_ptr error)
{
    try
    {
        if (error)
        {
            std::rethrow_exception(error);
        }
    }
    catch (std::invalid_argument const& e)
    {
        try
        {
            py::object const kilnError = py::module_::import("kiln.builder.errors").attr("KilnError");
            PyErr_SetString(kilnError.ptr(), e.what());
        }
        catch (py::error_already_set const&)
        {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    }
}
} // namespace
} // namespace kiln

PYBIND11_MODULE(_core, m)
{
    m.doc() = "Kiln runtime core: KV cache manager, scheduler, sampler and executor.";
    m.def("version", [] { return "0.1.0"; });
    m.attr("MAX_TOP_LOG_PROBS") = kiln::kMaxTopLogProbs;
    m.attr("MAX_BEAM_WIDTH") = kiln::kMaxBeamWidth;
    m.attr("MAX_GUIDED_CHOICES") = kiln::kMaxGuidedChoices;
    m.attr("MAX_JSON_DEPTH") = kiln::kMaxJsonDepth;
    py::register_exception_translator(&kiln::translateInvalidArgument);
    kiln::bindConfigs(m);
    kiln::bindRequests(m);
    kiln::bindCacheAndScheduler(m);
    kiln::bindSampler(m);
    kiln::bindExecutor(m);
#ifdef KILN_WITH_CUDA
    kiln::gpu::bind(m); // PlanExecutor derives from Backend, bound above
#endif
    py::module_::import("atexit").attr("register")(py::cpp_function(&kiln::shutdownLiveExecutors));
}
