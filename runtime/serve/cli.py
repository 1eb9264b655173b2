"""engine-serve: an OpenAI-compatible HTTP server over an engine."""
from __future__ import annotations

import socket
from pathlib import Path

import click

from kiln.builder.cli import one_line_errors
from kiln.builder.errors import KilnError


def _require_server_packages() -> None:
    missing = []
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise KilnError(f"engine-serve needs {', '.join(missing)}; install them with: "
                        f"pip install fastapi uvicorn prometheus_client (or: pip install 'kiln[serve]')")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise KilnError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or "
                        "--host") from None
    return sock


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", "engine_dir", required=True, type=click.Path(), help="Engine directory.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--served-model-name", default=None,
              help="Model id clients name in requests. Default: the engine directory's name.")
@click.option("--max-queue-size", type=int, default=512, show_default=True,
              help="Requests that may wait for a batch slot; more get 503 with Retry-After.")
@click.option("--max-batch-size", type=int, default=None, help="Default: the engine's.")
@click.option("--max-num-tokens", type=int, default=None, help="Default: the engine's.")
@click.option("--kv-cache-free-gpu-memory-fraction", type=float, default=0.9, show_default=True)
@click.option("--enable-kv-cache-reuse/--disable-kv-cache-reuse", default=True, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--enable-auto-tool-choice", is_flag=True,
              help="Let chat requests leave tool calls to the model (tool_choice auto); needs "
                   "--tool-call-parser.")
@click.option("--tool-call-parser", type=click.Choice(["hermes", "llama3_json", "mistral"]),
              default=None,
              help="How tool calls are read out of the model's text: hermes (<tool_call> "
                   "blocks), llama3_json (the answer one or more JSON calls) or mistral "
                   "([TOOL_CALLS] and a JSON list).")
@one_line_errors
def serve_main(engine_dir, host, port, served_model_name, max_queue_size, max_batch_size,
               max_num_tokens, kv_cache_free_gpu_memory_fraction, enable_kv_cache_reuse, device,
               log_level, enable_auto_tool_choice, tool_call_parser):
    """Serve an engine over OpenAI's HTTP API (/v1/completions, /v1/chat/completions)."""
    _require_server_packages()
    if max_queue_size < 0:
        raise KilnError(f"--max-queue-size is {max_queue_size}; pass 0 or more")
    if enable_auto_tool_choice != (tool_call_parser is not None):
        raise KilnError("--enable-auto-tool-choice and --tool-call-parser go together; pass both "
                        "(e.g. --enable-auto-tool-choice --tool-call-parser hermes) or neither")
    import uvicorn

    from kiln.runtime import ModelRunner
    from kiln.runtime.serve.app import create_app

    sock = _bind(host, port)
    try:
        runner = ModelRunner.from_dir(
            engine_dir, max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
            kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
            enable_kv_cache_reuse=enable_kv_cache_reuse,
            device=None if device == "auto" else device)
        with runner:
            name = served_model_name or Path(engine_dir).resolve().name
            app = create_app(runner, model_name=name, max_queue_size=max_queue_size,
                             tool_parser=tool_call_parser)
            click.echo(f"serving {name!r} ({runner.device}) at "
                       f"http://{host}:{sock.getsockname()[1]}/v1", err=True)
            config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
            try:
                uvicorn.Server(config).run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after shutting down cleanly
                pass
    finally:
        sock.close()
