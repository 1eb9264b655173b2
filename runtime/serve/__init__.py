"""engine-serve: an OpenAI-compatible HTTP server over one Kiln executor.

`create_app(runner, ...)` (kiln.runtime.serve.app) builds the FastAPI app; importing this package
does not import FastAPI, so the detokenizer is usable without the `serve` extra.
"""
