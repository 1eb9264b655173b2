"""The FastAPI app: OpenAI's completions, chat, models; vLLM's tokenize and detokenize; health;
Prometheus metrics.

Every request goes to the runner's one executor. A handler waits for the first response before
it answers, so a request the executor refuses still gets a 4xx, also when streaming; after that
a streamed answer ends with an error event if the executor fails it. A client that goes away
cancels its requests, whose KV blocks go back to the pool.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from kiln.runtime.serve.async_engine import AsyncEngine, Submission
from kiln.runtime.serve.errors import ApiError, bad_request
from kiln.runtime.serve.generation import (Limits, chat_prompt, check_vocab, plan_chat,
                                           plan_completion, select_best)
from kiln.runtime.serve.metrics import ServerMetrics, StatusCounter
from kiln.runtime.serve.protocol import (ChatCompletionRequest, CompletionRequest,
                                         DetokenizeRequest, TokenizeRequest, parse)
from kiln.runtime.serve.responses import ChatFormat, CompletionFormat
from kiln.runtime.serve.tools import PARSERS

log = logging.getLogger("kiln.serve")
DISCONNECT_POLL_S = 0.25
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
          "/tokenize", "/detokenize")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class Server:
    """What the routes share: the engine, the model's limits, the metrics."""

    def __init__(self, runner, model_name: str, max_queue_size: int,
                 tool_parser: str | None = None) -> None:
        self.runner = runner
        self.model_name = model_name
        self.tool_parser = tool_parser  # reads tool calls out of free text (tool_choice auto)
        self.engine = AsyncEngine(runner, max_queue_size)
        self.metrics = ServerMetrics(self.engine)
        self.limits = Limits(runner.vocab_size, runner.max_seq_len, runner.tokenizer.eos_id)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} does not exist; this server serves "
                           f"{self.model_name!r} (see /v1/models)", param="model",
                           code="model_not_found")

    async def events(self, sub: Submission, choices, request: Request | None):
        """(choice, new text, new tokens, (their log-probs, their alternatives), finish reason or
        None) per response.

        With `request`, polls for a disconnect while waiting (outside a streaming body, where
        Starlette watches for it instead and cancels the task)."""
        by_id: dict[int, list] = {}
        for rid, executor_request in zip(sub.ids, _requests(choices)):
            by_id[rid] = [c for c in choices if c.request is executor_request]
        live = len(choices)
        checked = time.perf_counter()
        while live:
            if request is not None and time.perf_counter() - checked > DISCONNECT_POLL_S:
                if await request.is_disconnected():
                    raise ClientGone()
                checked = time.perf_counter()
            try:
                r = await asyncio.wait_for(sub.get(), DISCONNECT_POLL_S) if request else await sub.get()
            except asyncio.TimeoutError:
                continue
            if r.has_error:
                status = 400 if r.error_message.startswith("bad request: ") else 500
                raise ApiError(status, r.error_message.removeprefix("bad request: "))
            if r.beams:
                for c in by_id[r.request_id]:
                    beam = r.beams[c.beam]
                    new = list(beam.tokens)
                    self._time_tokens(sub, c, len(new))
                    c.tokens += new
                    c.log_probs += beam.log_probs
                    text = c.text.add(new, True)
                    c.finish_reason = "stop" if c.text.stopped else beam.finish_reason.name.lower()
                    self.metrics.finished.labels(c.finish_reason).inc()
                    live -= 1
                    yield c, text, new, (list(beam.log_probs), []), c.finish_reason
                continue
            c = by_id[r.request_id][0]
            if c.finish_reason is not None:  # the cancelled end of a request cut by a stop string
                continue
            new = list(r.output_token_ids)
            self._time_tokens(sub, c, len(new))
            c.tokens += new
            c.log_probs += r.log_probs
            c.top_log_probs += r.top_log_probs
            if r.prompt_log_probs:
                c.prompt_log_probs = list(r.prompt_log_probs)
                c.prompt_ranks = list(r.prompt_ranks)
                c.prompt_top_log_probs = r.prompt_top_log_probs
            text = c.text.add(new, r.is_final)
            if c.text.stopped and not r.is_final:
                sub.stop(r.request_id)
            if r.is_final or c.text.stopped:
                c.finish_reason = "stop" if c.text.stopped else r.finish_reason.name.lower()
                self.metrics.finished.labels(c.finish_reason).inc()
                live -= 1
            yield c, text, new, (list(r.log_probs), list(r.top_log_probs)), c.finish_reason

    def _time_tokens(self, sub: Submission, c, n: int) -> None:
        if not n:
            return
        now = time.perf_counter()
        if c.tokens:  # a response with several tokens spreads its wait over them
            for _ in range(n):
                self.metrics.itl.observe((now - c.last_token_at) / n)
        else:
            self.metrics.ttft.observe(now - sub.submitted_at)
        c.last_token_at = now
        self.metrics.generation_tokens.inc(n)

    async def generate(self, request: Request, body, choices, fmt):
        sub = self.engine.submit(_requests(choices))
        self.metrics.prompt_tokens.inc(sum({c.prompt_index: len(c.prompt) for c in choices}.values()))
        events = self.events(sub, choices, request)
        try:
            first = await events.__anext__()
        except BaseException:
            sub.close()
            raise
        if not body.stream:
            try:
                async for _ in events:
                    pass
            finally:
                sub.close()
            self.metrics.e2e.observe(time.perf_counter() - sub.submitted_at)
            best_of = getattr(body, "best_of", None)
            shown = (select_best(choices, body.n)
                     if best_of and best_of > body.n and not body.use_beam_search else choices)
            return JSONResponse(fmt.whole(shown, counted=choices))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self._stream(sub, choices, fmt, first, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(sub.close))

    async def _stream(self, sub: Submission, choices, fmt, first, include_usage: bool):
        try:
            for chunk in fmt.start_chunks(choices):
                yield _sse(chunk)
            c, text, tokens, lps, reason = first
            for chunk in fmt.chunks(c, text, tokens, lps, reason):
                yield _sse(chunk)
            # Starlette cancels this body when the client disconnects; `finally` cancels the
            # requests then.
            async for c, text, tokens, lps, reason in self.events(sub, choices, None):
                for chunk in fmt.chunks(c, text, tokens, lps, reason):
                    yield _sse(chunk)
            if include_usage:
                yield _sse(fmt.usage_chunk(choices))
            yield "data: [DONE]\n\n"
            self.metrics.e2e.observe(time.perf_counter() - sub.submitted_at)
        except ApiError as e:
            yield _sse(e.body())
        finally:
            sub.close()


def _requests(choices) -> list:
    """The executor requests behind `choices`, each once (a beam search's serves n choices)."""
    out = []
    for c in choices:
        if not any(r is c.request for r in out):
            out.append(c.request)
    return out


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _json(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise bad_request(f"the request body is not valid JSON: {e}") from None


def _guarded(handler):
    """Turns an unexpected exception in a route into a 500 answer. (Starlette's own last-resort
    handler answers too, but then re-raises, and uvicorn drops the connection.)"""
    @functools.wraps(handler)
    async def wrapper(request: Request):
        try:
            return await handler(request)
        except (ApiError, ClientGone):
            raise
        except Exception as e:
            log.exception("unexpected error")
            raise ApiError(500, f"internal error: {type(e).__name__}: {e}") from None
    return wrapper


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def create_app(runner, *, model_name: str, max_queue_size: int = 512,
               tool_parser: str | None = None) -> FastAPI:
    """The app over `runner` (a kiln.runtime.ModelRunner, owned by the caller); `tool_parser`
    (kiln.runtime.serve.tools.PARSERS) lets chat requests leave tool calls to the model
    (tool_choice auto)."""
    if tool_parser is not None and tool_parser not in PARSERS:
        raise ValueError(f"tool parser {tool_parser!r} is not one of {', '.join(PARSERS)}")
    server = Server(runner, model_name, max_queue_size, tool_parser)
    app = FastAPI(title="Kiln", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(StatusCounter, metrics=server.metrics, routes=ROUTES)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return _error_response(e)

    @app.exception_handler(ClientGone)
    async def client_gone(_, e: ClientGone):  # nobody reads this; 499 as nginx logs it
        return JSONResponse({"error": {"message": "client closed the request"}}, status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        msg = (f"no route {request.url.path}" if e.status_code == 404 else
               f"{request.method} is not allowed on {request.url.path}" if e.status_code == 405
               else str(e.detail))
        return _error_response(ApiError(e.status_code, msg))

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):
        log.exception("unexpected error")
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": server.model_name, "object": "model", "created": 0, "owned_by": "kiln",
            "max_model_len": server.limits.max_seq_len}]}

    @app.post("/tokenize")
    @_guarded
    async def tokenize(request: Request):
        body = parse(TokenizeRequest, await _json(request))
        server.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("pass either prompt or messages", "prompt")
        tok = runner.tokenizer
        ids = (tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
               if body.prompt is not None else
               chat_prompt(body.messages, tok, body.add_generation_prompt))
        return {"count": len(ids), "max_model_len": server.limits.max_seq_len, "tokens": ids}

    @app.post("/detokenize")
    @_guarded
    async def detokenize(request: Request):
        body = parse(DetokenizeRequest, await _json(request))
        server.check_model(body.model)
        check_vocab(body.tokens, server.limits, "tokens", "tokens")
        return {"prompt": runner.tokenizer.decode(body.tokens)}

    @app.post("/v1/completions")
    @_guarded
    async def completions(request: Request):
        body = parse(CompletionRequest, await _json(request))
        server.check_model(body.model)
        choices = plan_completion(body, runner.tokenizer, server.limits)
        fmt = CompletionFormat(server.model_name, runner.tokenizer, body.logprobs is not None,
                               body.logprobs or 0, body.prompt_logprobs)
        return await server.generate(request, body, choices, fmt)

    @app.post("/v1/chat/completions")
    @_guarded
    async def chat_completions(request: Request):
        body = parse(ChatCompletionRequest, await _json(request))
        server.check_model(body.model)
        choices = plan_chat(body, runner.tokenizer, server.limits, server.tool_parser)
        fmt = ChatFormat(server.model_name, runner.tokenizer, body.logprobs,
                         body.top_logprobs or 0, body.prompt_logprobs)
        return await server.generate(request, body, choices, fmt)

    return app
