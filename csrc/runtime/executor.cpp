#include "runtime/executor.h"

#include "runtime/beam_search.h"
#include "runtime/response_queue.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace kiln
{
namespace
{
std::string oneLine(std::string text)
{
    std::replace(text.begin(), text.end(), '\n', ' ');
    return text;
}

/// A response of request `id`, without tokens yet.
Response makeResponse(IdType id, bool isFinal, FinishReason reason, std::string error)
{
    Response response;
    response.requestId = id;
    response.isFinal = isFinal;
    response.finishReason = reason;
    response.errorMessage = std::move(error);
    return response;
}
} // namespace

class Executor::Impl
{
public:
    Impl(ExecutorConfig const& config, std::shared_ptr<Backend> backend)
        : mConfig(checked(config))
        , mBackend(std::move(backend))
        , mKvCache({numBlocksOf(mBackend.get()), config.tokensPerBlock, config.enableKvCacheReuse})
        , mScheduler({config.maxBatchSize, config.maxNumTokens, config.maxSeqLen, config.capacityPolicy}, mKvCache)
        , mSampler(config.vocabSize)
        , mSeeder(std::random_device{}())
        , mKvStats(mKvCache.stats())
    {
        mThread = std::thread([this] { loop(); });
    }

    ~Impl()
    {
        shutdown();
    }

    Impl(Impl const&) = delete;
    Impl& operator=(Impl const&) = delete;

    /// Queues `requests` at once: the loop takes none of them before it can take them all.
    std::vector<IdType> enqueue(std::vector<Request> const& requests)
    {
        std::vector<IdType> ids;
        ids.reserve(requests.size());
        std::lock_guard<std::mutex> lock(mMutex);
        for (Request const& request : requests)
        {
            IdType const id = mNextId++;
            ids.push_back(id);
            if (mStopping)
            {
                mResponses.push(
                    {makeResponse(id, true, FinishReason::kError, "the executor is shut down; create a new one")});
                continue;
            }
            mResponses.expect(id);
            mIncoming.emplace_back(id, request);
        }
        mWorkCv.notify_one();
        return ids;
    }

    std::vector<Response> await(std::optional<IdType> id, std::optional<std::chrono::milliseconds> timeout)
    {
        return mResponses.take(id, timeout);
    }

    void cancel(IdType id)
    {
        if (!mResponses.isExpected(id))
        {
            return;
        }
        std::lock_guard<std::mutex> lock(mMutex);
        mCancelled.push_back(id);
        mWorkCv.notify_one();
    }

    void shutdown()
    {
        {
            std::lock_guard<std::mutex> lock(mMutex);
            mStopping = true;
        }
        mWorkCv.notify_all();
        mHeldCv.notify_all();
        std::call_once(mJoined, [this] { mThread.join(); });
    }

    void pause()
    {
        if (std::this_thread::get_id() == mThread.get_id())
        {
            throw std::logic_error("pause() from the executor's own thread (its backend) would wait forever");
        }
        std::unique_lock<std::mutex> lock(mMutex);
        ++mPauses;
        mWorkCv.notify_one();
        mHeldCv.wait(lock, [this] { return mHeld || mStopping; });
    }

    void resume()
    {
        {
            std::lock_guard<std::mutex> lock(mMutex);
            if (mPauses == 0)
            {
                throw std::logic_error("resume() without a pause() to end");
            }
            --mPauses;
        }
        mWorkCv.notify_one();
    }

    std::optional<IterationStats> latestStats() const
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mLatestStats;
    }

    KvCacheStats kvStats() const
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mKvStats;
    }

    ExecutorConfig const& config() const
    {
        return mConfig;
    }

private:
    /// Per-request state the scheduler does not need.
    struct RequestState
    {
        Request request;
        std::mt19937_64 rng;
        std::vector<float> logProbs;
        std::vector<std::vector<TokenLogProb>> topLogProbs;
        SizeType numSent = 0; ///< generated tokens already in a response
        JsonObjectPrefix json; ///< with JSON output: the generated text read so far
        std::int32_t regexState = 0; ///< with a regex: its automaton's state after the generated text
        Grammar::State grammarState; ///< with a grammar: its parses of the generated text
        std::vector<float> promptLogProbs; ///< of prompt tokens 1, 2, ... as their logits come
        std::vector<SizeType> promptRanks;
        std::vector<std::vector<TokenLogProb>> promptTopLogProbs;
        SizeType numPromptScored = 0; ///< prompt tokens after the first whose log-probability is known
        bool sentAny = false; ///< a response went out (the first carries the prompt's log-probabilities)
        bool streamDue = false; ///< streaming: tokens accepted whose response is built with the next publication
        /// With beam_width > 1: the search, the scheduler sequences of its running beams still to
        /// report (the request's own before the first step) and the candidates of those that did.
        std::optional<BeamSearch> beam;
        std::vector<IdType> beamSeqs;
        std::vector<std::optional<std::vector<TokenLogProb>>> beamRows;
        std::uint64_t arrival = 0; ///< its place in the scheduler's order, kept by its beams
    };

    /// A running beam's scheduler sequence: its request and its index among the running beams.
    struct BeamSeq
    {
        IdType owner = 0;
        std::size_t beam = 0;
    };

    static ExecutorConfig const& checked(ExecutorConfig const& config)
    {
        if (auto problem = config.validate())
        {
            throw std::invalid_argument("invalid executor config: " + *problem);
        }
        return config;
    }

    static SizeType numBlocksOf(Backend const* backend)
    {
        if (backend == nullptr)
        {
            throw std::invalid_argument("the executor needs a backend, got none");
        }
        SizeType const n = backend->numBlocks();
        if (n < 1)
        {
            throw std::invalid_argument(
                "the backend holds " + std::to_string(n) + " KV blocks; give it at least one (num_blocks >= 1)");
        }
        return n;
    }

    void loop()
    {
        while (true)
        {
            std::deque<std::pair<IdType, Request>> incoming;
            std::vector<IdType> cancelled;
            {
                std::unique_lock<std::mutex> lock(mMutex);
                auto const ready = [this] {
                    return mStopping || mPauses > 0 || !mIncoming.empty() || !mCancelled.empty()
                        || mScheduler.hasUnfinished();
                };
                // No step follows at once, or a hold is asked for: what the last step owes goes out
                // now rather than while the next one runs.
                if ((!ready() || mPauses > 0) && owesPublication())
                {
                    lock.unlock();
                    publishOwed();
                    continue;
                }
                mWorkCv.wait(lock, ready);
                if (mPauses > 0 && !mStopping)
                {
                    mHeld = true;
                    mHeldCv.notify_all();
                    mWorkCv.wait(lock, [this] { return mStopping || mPauses == 0; });
                    mHeld = false;
                    continue;
                }
                if (mStopping)
                {
                    break;
                }
                incoming.swap(mIncoming);
                cancelled.swap(mCancelled);
            }
            for (auto& [id, request] : incoming)
            {
                admit(id, std::move(request));
            }
            for (IdType const id : cancelled)
            {
                finish(id, FinishReason::kCancelled, "");
            }
            step();
        }
        drain();
    }

    void admit(IdType id, Request request)
    {
        auto problem = validateRequest(request, mConfig.vocabSize);
        if (!problem)
        {
            problem = mScheduler.addRequest(id, request.inputTokenIds, request.maxNewTokens, request.priority,
                request.promptLogProbs.has_value());
        }
        if (problem)
        {
            mOutbox.push_back(makeResponse(id, true, FinishReason::kError, "bad request: " + *problem));
            return;
        }
        auto const& seed = request.samplingConfig.seed;
        RequestState& state = mStates[id];
        state.rng.seed(seed ? *seed : mSeeder());
        state.json = JsonObjectPrefix(request.jsonSchema.get());
        state.request = std::move(request);
        if (state.request.grammar)
        {
            state.grammarState = state.request.grammar->start();
        }
        SamplingConfig const& sampling = state.request.samplingConfig;
        if (sampling.beamWidth > 1)
        {
            auto const prompt = static_cast<SizeType>(state.request.inputTokenIds.size());
            state.beam.emplace(sampling.beamWidth, prompt,
                std::min(prompt + state.request.maxNewTokens, mConfig.maxSeqLen), sampling.lengthPenalty,
                static_cast<EarlyStopping>(sampling.earlyStopping), state.request.endId, state.request.stopWords);
            state.beamSeqs = {id};
            state.beamRows.assign(1, std::nullopt);
            state.arrival = mScheduler.find(id)->arrival;
        }
    }

    void step()
    {
        auto const start = std::chrono::steady_clock::now();
        SchedulerOutput const output = mScheduler.schedule();
        if (output.empty())
        {
            publishOwed();
            return;
        }
        double forwardMicros = 0;
        StepParts parts;
        std::optional<std::string> failure;
        bool published = false;
        try
        {
            StepInputs inputs = buildStepInputs(output, mScheduler, mKvCache, mConfig.maxBlocksPerSeq());
            std::size_t const numRows = output.sequences.size();
            std::vector<SizeType>& logitRows = inputs.logitRows.emplace();
            std::vector<bool> scoresPrompt(numRows);
            for (std::size_t i = 0; i < numRows; ++i)
            {
                ScheduledSequence const& s = output.sequences[i];
                scoresPrompt[i] = scoresPromptToken(s);
                if ((s.samplesNextToken && !picksOnBackend(s.id)) || scoresPrompt[i])
                {
                    logitRows.push_back(static_cast<SizeType>(i));
                }
            }
            parts.scheduleMicros = microsSince(start);
            auto const forwardStart = std::chrono::steady_clock::now();
            // While the backend runs this step: the responses and statistics of the one before.
            mBackend->start(inputs, [&] {
                auto const besideStart = std::chrono::steady_clock::now();
                publishOwed();
                published = true;
                parts.besideMicros = microsSince(besideStart);
            });
            forwardMicros = microsSince(forwardStart) - parts.besideMicros;
            auto const finishStart = std::chrono::steady_clock::now();
            StepOutput const result = mBackend->finish();
            forwardMicros += microsSince(finishStart);
            auto const updateStart = std::chrono::steady_clock::now();
            auto const vocab = static_cast<std::size_t>(mConfig.vocabSize);
            bool const picked = !result.tokens.empty();
            std::size_t const rows = picked ? logitRows.size() : numRows;
            if (result.logits.size() != rows * vocab
                || (picked && (result.tokens.size() != numRows || result.logProbs.size() != numRows)))
            {
                std::string const tokens = picked ? " and " + std::to_string(result.tokens.size()) + " tokens" : "";
                throw std::runtime_error("forward returned " + std::to_string(result.logits.size()) + " logits" + tokens
                    + ", expected " + std::to_string(rows) + " x " + std::to_string(vocab)
                    + (picked ? " and " + std::to_string(numRows) + " tokens" : ""));
            }
            mScheduler.updateComputed(output);
            std::size_t nextLogitRow = 0;
            for (std::size_t i = 0; i < numRows; ++i)
            {
                ScheduledSequence const& s = output.sequences[i];
                float const* row = nullptr; // this row's logits, when they came back
                if (!picked)
                {
                    row = result.logits.data() + i * vocab;
                }
                else if (nextLogitRow < logitRows.size() && logitRows[nextLogitRow] == static_cast<SizeType>(i))
                {
                    row = result.logits.data() + nextLogitRow++ * vocab;
                }
                if (mStates.count(ownerOf(s.id)) == 0)
                {
                    continue; // its request ended earlier in this loop (another of its beams failed)
                }
                if (scoresPrompt[i])
                {
                    scorePromptToken(s, row);
                }
                if (!s.samplesNextToken)
                {
                    continue;
                }
                if (row != nullptr)
                {
                    sampleAndUpdate(s.id, row);
                }
                else
                {
                    acceptPicked(s.id, result.tokens[i], result.logProbs[i]);
                }
            }
            parts.updateMicros = microsSince(updateStart);
        }
        catch (std::exception const& e)
        {
            failure = oneLine(e.what());
        }
        if (!published)
        {
            publishOwed();
        }
        if (failure)
        {
            // The step's KV writes are suspect, so its requests fail; everyone else carries on.
            for (ScheduledSequence const& s : output.sequences)
            {
                finish(ownerOf(s.id), FinishReason::kError,
                    "the backend failed in step " + std::to_string(mIteration) + ": " + *failure);
            }
        }
        recordStats(output, microsSince(start), forwardMicros, parts);
    }

    static double microsSince(std::chrono::steady_clock::time_point start)
    {
        return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    }

    /// Whether the backend may pick the request's next token (the argmax of the raw logits):
    /// plain greedy and no beam search, with no token held back (min_tokens, bad words), no
    /// choices, JSON, regex or grammar, and no alternatives asked for.
    bool picksOnBackend(IdType id) const
    {
        Request const& request = mStates.at(ownerOf(id)).request;
        SizeType const minTokens = request.samplingConfig.minTokens;
        return request.samplingConfig.isPlainGreedy() && request.samplingConfig.beamWidth == 1
            && request.numTopLogProbs == 0 && request.badWords.empty() && request.choices.empty()
            && !request.jsonOutput() && request.regex == nullptr && request.grammar == nullptr
            && (minTokens == 0 || mScheduler.find(id)->numGeneratedTokens() >= minTokens);
    }

    /// Whether this step's last token of `s` is a prompt position whose logits score the next
    /// prompt token, not scored yet (a recomputation after preemption scores nothing twice).
    bool scoresPromptToken(ScheduledSequence const& s) const
    {
        RequestState const& state = mStates.at(ownerOf(s.id));
        if (!state.request.promptLogProbs)
        {
            return false;
        }
        SizeType const position = s.startPosition + s.numTokens - 1;
        return position + 1 < mScheduler.find(s.id)->numPromptTokens
            && position == state.numPromptScored;
    }

    /// Records the log-probability of the prompt token after `s`'s last one in this step.
    void scorePromptToken(ScheduledSequence const& s, float const* logits)
    {
        RequestState& state = mStates.at(s.id);
        Sequence const& seq = *mScheduler.find(s.id);
        auto const next = static_cast<std::size_t>(s.startPosition + s.numTokens);
        SampleResult result;
        try
        {
            result = mSampler.score(logits, seq.tokens.at(next), *state.request.promptLogProbs);
        }
        catch (std::runtime_error const& e)
        {
            finish(s.id, FinishReason::kError, std::string("scoring the prompt failed: ") + e.what());
            return;
        }
        ++state.numPromptScored;
        state.promptLogProbs.push_back(result.logProb);
        state.promptRanks.push_back(result.rank);
        if (*state.request.promptLogProbs > 0)
        {
            state.promptTopLogProbs.push_back(std::move(result.top));
        }
    }

    /// The request a scheduler sequence belongs to: itself, or the one whose beam it runs.
    IdType ownerOf(IdType id) const
    {
        auto const it = mBeamSeqs.find(id);
        return it == mBeamSeqs.end() ? id : it->second.owner;
    }

    /// Records a running beam's candidates; once every running beam's are in, steps the search and
    /// queues the beams it keeps (each its request's tokens so far: the prefix cache gives back the
    /// full blocks they share, the rest is computed again) or ends the request.
    void beamRow(IdType seqId, float const* logits)
    {
        IdType const owner = ownerOf(seqId);
        RequestState& state = mStates.at(owner);
        auto const it = mBeamSeqs.find(seqId);
        std::size_t const beam = it == mBeamSeqs.end() ? 0 : it->second.beam;
        try
        {
            state.beamRows.at(beam) = mSampler.score(logits, 0, state.beam->numCandidates()).top;
        }
        catch (std::runtime_error const& e)
        {
            finish(owner, FinishReason::kError, std::string("beam search failed: ") + e.what());
            return;
        }
        // A beam that reported leaves the scheduler: it has nothing to compute until the step.
        dropBeamSeq(state, seqId);
        if (!state.beamSeqs.empty())
        {
            return;
        }
        std::vector<std::vector<TokenLogProb>> candidates;
        for (auto& row : state.beamRows)
        {
            candidates.push_back(std::move(*row));
        }
        if (!state.beam->step(candidates))
        {
            finish(owner, state.beam->hypotheses().front().reason, "");
            return;
        }
        auto const& running = state.beam->running();
        state.beamRows.assign(running.size(), std::nullopt);
        for (std::size_t b = 0; b < running.size(); ++b)
        {
            IdType const next = mNextBeamSeqId++;
            std::vector<TokenIdType> tokens = state.request.inputTokenIds;
            tokens.insert(tokens.end(), running[b].tokens.begin(), running[b].tokens.end());
            if (auto problem = mScheduler.addRequest(next, std::move(tokens), 1, state.request.priority, false, state.arrival))
            {
                finish(owner, FinishReason::kError, "beam search failed: " + *problem);
                return;
            }
            mBeamSeqs.emplace(next, BeamSeq{owner, b});
            state.beamSeqs.push_back(next);
        }
    }

    /// Removes a beam's scheduler sequence (its blocks go back to the pool, the full ones cached).
    void dropBeamSeq(RequestState& state, IdType seqId)
    {
        mScheduler.removeRequest(seqId);
        mBeamSeqs.erase(seqId);
        state.beamSeqs.erase(std::remove(state.beamSeqs.begin(), state.beamSeqs.end(), seqId), state.beamSeqs.end());
    }

    void sampleAndUpdate(IdType id, float const* logits)
    {
        if (mStates.at(ownerOf(id)).beam)
        {
            beamRow(id, logits);
            return;
        }
        RequestState& state = mStates.at(id);
        Sequence const& seq = *mScheduler.find(id);
        Request const& request = state.request;
        SampleResult result;
        try
        {
            std::vector<TokenIdType> only = request.jsonOutput()
                ? jsonTokens(state.json, *request.tokenTable, mConfig.vocabSize)
                : request.regex || request.grammar ? guideTokens(state)
                                                   : choiceTokens(request, seq.tokens, seq.numPromptTokens);
            if ((request.jsonOutput() || request.regex || request.grammar) && only.empty())
            {
                finish(id, FinishReason::kError,
                    std::string("sampling failed: no token of the vocabulary continues the ")
                        + (request.regex ? "regex" : request.grammar ? "grammar" : "JSON output"));
                return;
            }
            result = mSampler.sample(logits, request.samplingConfig, seq.tokens, seq.numPromptTokens, state.rng,
                heldBackTokens(request, seq.tokens, seq.numPromptTokens), request.numTopLogProbs, only);
        }
        catch (std::runtime_error const& e)
        {
            finish(id, FinishReason::kError, std::string("sampling failed: ") + e.what());
            return;
        }
        accept(id, result);
    }

    /// The tokens that keep the request's regex matchable or a sentence of its grammar
    /// reachable, and its end id where the text is whole.
    std::vector<TokenIdType> guideTokens(RequestState const& state) const
    {
        Request const& request = state.request;
        TokenTable const& table = *request.tokenTable;
        std::vector<TokenIdType> out = request.regex ? request.regex->tokens(state.regexState, table, mConfig.vocabSize)
                                                     : request.grammar->tokens(state.grammarState, table, mConfig.vocabSize);
        bool const whole
            = request.regex ? request.regex->accepting(state.regexState) : Grammar::accepting(state.grammarState);
        TokenIdType const end = request.endId;
        if (end >= 0 && end < mConfig.vocabSize && whole)
        {
            auto const at = std::lower_bound(out.begin(), out.end(), end);
            if (at == out.end() || *at != end)
            {
                out.insert(at, end);
            }
        }
        return out;
    }

    /// A greedy token the backend picked; -1 marks a row with NaN or no finite logit.
    void acceptPicked(IdType id, TokenIdType token, float logProb)
    {
        if (token < 0 || token >= mConfig.vocabSize)
        {
            finish(id, FinishReason::kError, "sampling failed: the backend returned NaN logits or a row with no finite value");
            return;
        }
        accept(id, SampleResult{token, logProb, {}});
    }

    /// Whether `token`'s bytes continue the request's JSON output (read into its state).
    static bool continuesJson(RequestState& state, TokenIdType token)
    {
        auto const& bytes = state.request.tokenTable->bytes;
        return token >= 0 && static_cast<std::size_t>(token) < bytes.size() && !bytes[static_cast<std::size_t>(token)].empty()
            && state.json.feed(bytes[static_cast<std::size_t>(token)]);
    }

    /// Whether `token`'s bytes continue the request's regex or grammar (read into its state; a
    /// grammar ambiguous past its limit there throws std::runtime_error).
    static bool continuesGuide(RequestState& state, TokenIdType token)
    {
        auto const& bytes = state.request.tokenTable->bytes;
        auto const t = static_cast<std::size_t>(token);
        if (state.request.regex)
        {
            state.regexState = t < bytes.size() ? state.request.regex->walk(state.regexState, bytes[t]) : RegexDfa::kDead;
            return state.regexState != RegexDfa::kDead;
        }
        state.grammarState = t < bytes.size() && !bytes[t].empty()
            ? state.request.grammar->advance(state.grammarState, bytes[t])
            : Grammar::State{};
        return !state.grammarState.empty();
    }

    void accept(IdType id, SampleResult const& result)
    {
        RequestState& state = mStates.at(id);
        Sequence const& seq = *mScheduler.find(id);
        mScheduler.appendToken(id, result.token);
        if (state.request.returnLogProbs)
        {
            state.logProbs.push_back(result.logProb);
        }
        if (state.request.numTopLogProbs > 0)
        {
            state.topLogProbs.push_back(result.top);
        }
        if (state.request.jsonOutput() && !continuesJson(state, result.token))
        {
            finish(id, FinishReason::kError, "sampling failed: the picked token does not continue the JSON output");
            return;
        }
        bool closed = state.json.complete();
        if ((state.request.regex || state.request.grammar) && result.token != state.request.endId)
        {
            try
            {
                if (!continuesGuide(state, result.token))
                {
                    finish(id, FinishReason::kError,
                        std::string("sampling failed: the picked token does not continue the ")
                            + (state.request.regex ? "regex" : "grammar"));
                    return;
                }
            }
            catch (std::runtime_error const& e)
            {
                finish(id, FinishReason::kError, std::string("sampling failed: ") + e.what());
                return;
            }
            closed = state.request.regex ? state.request.regex->closed(state.regexState)
                                         : Grammar::closed(state.grammarState);
        }
        FinishReason const reason
            = stopReason(state.request, seq.tokens, seq.numPromptTokens, mConfig.maxSeqLen, closed);
        if (reason != FinishReason::kNotFinished)
        {
            finish(id, reason, "");
        }
        else if (state.request.streaming && !state.streamDue)
        {
            state.streamDue = true;
            mStreamDue.push_back(id);
        }
    }

    Response takeUnsent(IdType id, RequestState& state, bool isFinal, FinishReason reason, std::string error)
    {
        Response response = makeResponse(id, isFinal, reason, std::move(error));
        if (state.beam)
        {
            if (reason != FinishReason::kError && reason != FinishReason::kCancelled)
            {
                response.beams = state.beam->hypotheses();
                response.outputTokenIds = response.beams.front().tokens;
                if (state.request.returnLogProbs)
                {
                    response.logProbs = response.beams.front().logProbs;
                }
            }
            return response;
        }
        if (Sequence const* seq = mScheduler.find(id))
        {
            auto const from = static_cast<std::size_t>(seq->numPromptTokens + state.numSent);
            response.outputTokenIds.assign(seq->tokens.begin() + static_cast<std::ptrdiff_t>(from), seq->tokens.end());
            if (state.request.returnLogProbs)
            {
                response.logProbs.assign(state.logProbs.begin() + state.numSent, state.logProbs.end());
            }
            if (state.request.numTopLogProbs > 0)
            {
                response.topLogProbs.assign(state.topLogProbs.begin() + state.numSent, state.topLogProbs.end());
            }
            state.numSent = seq->numGeneratedTokens();
        }
        if (!state.sentAny)
        {
            response.promptLogProbs = std::move(state.promptLogProbs);
            response.promptRanks = std::move(state.promptRanks);
            response.promptTopLogProbs = std::move(state.promptTopLogProbs);
            state.sentAny = true;
        }
        return response;
    }

    void finish(IdType id, FinishReason reason, std::string const& error)
    {
        auto const it = mStates.find(id);
        if (it == mStates.end())
        {
            return;
        }
        if (it->second.streamDue)
        {
            // The tokens accepted before go out as they would have: in a response of their own.
            mOutbox.push_back(takeUnsent(id, it->second, false, FinishReason::kNotFinished, ""));
            it->second.streamDue = false;
        }
        mOutbox.push_back(takeUnsent(id, it->second, true, reason, error));
        for (IdType const seqId : std::vector<IdType>(it->second.beamSeqs))
        {
            dropBeamSeq(it->second, seqId);
        }
        mScheduler.removeRequest(id);
        mStates.erase(it);
    }

    /// The executor's own parts of a step's time (IterationStats::totalScheduleMicros ...).
    struct StepParts
    {
        double scheduleMicros = 0;
        double besideMicros = 0;
        double updateMicros = 0;
    };

    void recordStats(SchedulerOutput const& output, double stepMicros, double forwardMicros, StepParts const& parts)
    {
        mTotals.totalComputedPromptTokens += output.numPrefillTokens;
        mTotals.totalStepMicros += stepMicros;
        mTotals.totalForwardMicros += forwardMicros;
        mTotals.totalScheduleMicros += parts.scheduleMicros;
        mTotals.totalBesideMicros += parts.besideMicros;
        mTotals.totalUpdateMicros += parts.updateMicros;
        mTotals.totalDecodeTokens += output.numDecodeTokens;
        if (output.numPrefillTokens > 0)
        {
            mTotals.totalPrefillStepMicros += stepMicros;
            ++mTotals.totalPrefillSteps;
            mTotals.totalPrefillStepDecodeTokens += output.numDecodeTokens;
            mTotals.totalPrefillStepSequences += static_cast<std::int64_t>(output.sequences.size());
            for (ScheduledSequence const& seq : output.sequences)
            {
                std::int64_t const n = seq.numTokens;
                std::int64_t const context = seq.startPosition + n;
                if (seq.isDecode)
                {
                    mTotals.totalPrefillStepDecodeContextTokens += context;
                    continue;
                }
                mTotals.totalPrefillStepPromptContextTokens += context;
                // Positions start .. start + n - 1 attend to start + 1 .. start + n keys.
                mTotals.totalPrefillStepPromptAttentionPairs += n * seq.startPosition + n * (n + 1) / 2;
            }
        }
        else
        {
            for (ScheduledSequence const& seq : output.sequences)
            {
                mTotals.totalDecodeOnlyContextTokens += seq.startPosition + seq.numTokens;
            }
        }
        KvCacheStats const kv = mKvCache.stats();
        IterationStats stats = mTotals;
        stats.iteration = mIteration++;
        stats.numScheduledRequests = static_cast<SizeType>(output.sequences.size());
        stats.numPrefillTokens = output.numPrefillTokens;
        stats.numDecodeTokens = output.numDecodeTokens;
        stats.numWaitingRequests = static_cast<SizeType>(mScheduler.waitingIds().size());
        stats.numRunningRequests = static_cast<SizeType>(mScheduler.runningIds().size());
        stats.kvUsedBlocks = kv.usedBlocks;
        stats.kvFreeBlocks = kv.freeBlocks;
        stats.totalReusedTokens = kv.reusedTokens;
        stats.totalPreemptions = mScheduler.numPreemptions();
        stats.stepMicros = stepMicros;
        stats.forwardMicros = forwardMicros;
        mPendingStats = stats;
        mStatsOwed = true;
    }

    /// Whether responses or statistics wait for publishOwed().
    bool owesPublication() const
    {
        return mStatsOwed || !mOutbox.empty() || !mStreamDue.empty();
    }

    /// Builds the streaming responses owed for accepted tokens, then publishes everything owed.
    /// A step calls it once its backend has started (so the host work runs beside the device's);
    /// the loop, before it waits or holds.
    void publishOwed()
    {
        for (IdType const id : mStreamDue)
        {
            auto const it = mStates.find(id);
            if (it != mStates.end() && it->second.streamDue)
            {
                mOutbox.push_back(takeUnsent(id, it->second, false, FinishReason::kNotFinished, ""));
                it->second.streamDue = false;
            }
        }
        mStreamDue.clear();
        if (mStatsOwed || !mOutbox.empty())
        {
            publish();
        }
    }

    void publish()
    {
        mStatsOwed = false;
        {
            // Stats first, so a client woken by a response sees the state that produced it.
            std::lock_guard<std::mutex> lock(mMutex);
            if (mPendingStats)
            {
                mLatestStats = mPendingStats;
            }
            mKvStats = mKvCache.stats();
        }
        mResponses.push(std::move(mOutbox));
        mOutbox.clear();
    }

    void drain()
    {
        std::deque<std::pair<IdType, Request>> incoming;
        {
            std::lock_guard<std::mutex> lock(mMutex);
            incoming.swap(mIncoming);
            mCancelled.clear();
        }
        std::string const why = "the executor shut down before the request finished";
        for (auto const& entry : incoming)
        {
            mOutbox.push_back(makeResponse(entry.first, true, FinishReason::kCancelled, why));
        }
        std::vector<IdType> pending;
        for (auto const& entry : mStates)
        {
            pending.push_back(entry.first);
        }
        std::sort(pending.begin(), pending.end());
        for (IdType const id : pending)
        {
            finish(id, FinishReason::kCancelled, why);
        }
        publishOwed();
    }

    ExecutorConfig const mConfig;
    std::shared_ptr<Backend> mBackend;
    // Loop-thread state.
    KvCacheManager mKvCache;
    Scheduler mScheduler;
    Sampler mSampler;
    std::mt19937_64 mSeeder;
    std::unordered_map<IdType, RequestState> mStates;
    std::unordered_map<IdType, BeamSeq> mBeamSeqs; ///< the scheduler sequences of running beams
    IdType mNextBeamSeqId = IdType{1} << 62;       ///< their ids, apart from request ids
    std::vector<Response> mOutbox;
    std::vector<IdType> mStreamDue; ///< streaming requests owed a response for tokens accepted (streamDue)
    bool mStatsOwed = false;        ///< a step's statistics not published yet
    std::int64_t mIteration = 0;
    std::optional<IterationStats> mPendingStats;
    IterationStats mTotals; ///< only its running totals are kept; each step's stats start from them
    ResponseQueue mResponses;
    // Shared state, guarded by mMutex.
    mutable std::mutex mMutex;
    std::condition_variable mWorkCv;
    std::condition_variable mHeldCv; ///< the loop took up a pause
    int mPauses = 0;                 ///< pause() calls not yet resumed
    bool mHeld = false;              ///< the loop is held between steps
    std::deque<std::pair<IdType, Request>> mIncoming;
    std::vector<IdType> mCancelled;
    IdType mNextId = 1;
    bool mStopping = false;
    std::optional<IterationStats> mLatestStats;
    KvCacheStats mKvStats;
    std::once_flag mJoined;
    std::thread mThread;
};

Executor::Executor(ExecutorConfig const& config, std::shared_ptr<Backend> backend)
    : mImpl(std::make_unique<Impl>(config, std::move(backend)))
{
}

Executor::~Executor()
{
    if (mImpl)
    {
        mImpl->shutdown();
    }
}

Executor::Executor(Executor&&) noexcept = default;
Executor& Executor::operator=(Executor&&) noexcept = default;

IdType Executor::enqueueRequest(Request const& request)
{
    return mImpl->enqueue({request}).front();
}

std::vector<IdType> Executor::enqueueRequests(std::vector<Request> const& requests)
{
    return mImpl->enqueue(requests);
}

std::vector<Response> Executor::awaitResponses(std::optional<std::chrono::milliseconds> timeout)
{
    return mImpl->await(std::nullopt, timeout);
}

std::vector<Response> Executor::awaitResponses(IdType id, std::optional<std::chrono::milliseconds> timeout)
{
    return mImpl->await(id, timeout);
}

void Executor::cancelRequest(IdType id)
{
    mImpl->cancel(id);
}

void Executor::shutdown()
{
    mImpl->shutdown();
}

void Executor::pause()
{
    mImpl->pause();
}

void Executor::resume()
{
    mImpl->resume();
}

std::optional<IterationStats> Executor::getLatestIterationStats() const
{
    return mImpl->latestStats();
}

KvCacheStats Executor::getKvCacheStats() const
{
    return mImpl->kvStats();
}

ExecutorConfig const& Executor::getConfig() const
{
    return mImpl->config();
}

} // namespace kiln
