"""engine-serve as users run it: a process on loopback that answers and stops on Ctrl-C, and
one-line errors for what keeps it from starting."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from kiln.runtime.serve.cli import serve_main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(result, text):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


def test_serves_then_stops_on_ctrl_c(tiny_engine):
    _, engine = tiny_engine("llama")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kiln.runtime.serve", "--engine", str(engine),
                             "--port", str(port), "--device", "cpu", "--served-model-name", "t",
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "engine-serve did not come up"
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/completions", json={"model": "t", "prompt": "the object",
                                                      "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "t"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert f"serving 't' (cpu) at http://127.0.0.1:{port}/v1" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_port_in_use(tiny_engine):
    _, engine = tiny_engine("llama")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve_main, ["--engine", str(engine), "--port", str(port)])
    one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_missing_engine_and_bad_options(tmp_path):
    result = CliRunner().invoke(serve_main, ["--engine", str(tmp_path / "none"), "--port", "0"])
    one_line_error(result, "does not exist")
    result = CliRunner().invoke(serve_main, ["--engine", str(tmp_path), "--port", "0",
                                             "--max-queue-size", "-1"])
    one_line_error(result, "--max-queue-size is -1")
    result = CliRunner().invoke(serve_main, ["--engine", str(tmp_path), "--port", "99999"])
    assert result.exit_code == 2 and "'--port': 99999 is not in the range 0<=x<=65535" in result.output
    for flags in (["--enable-auto-tool-choice"], ["--tool-call-parser", "hermes"]):
        result = CliRunner().invoke(serve_main, ["--engine", str(tmp_path), "--port", "0", *flags])
        one_line_error(result, "--enable-auto-tool-choice and --tool-call-parser go together")


def test_missing_server_packages_named_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails as if not installed
    result = CliRunner().invoke(serve_main, ["--engine", str(tmp_path)])
    one_line_error(result, "engine-serve needs uvicorn; install them with: pip install fastapi "
                           "uvicorn prometheus_client")


@pytest.mark.parametrize("module", ["kiln.runtime.serve", "kiln.runtime.triton"])
def test_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--engine" in out.stdout
