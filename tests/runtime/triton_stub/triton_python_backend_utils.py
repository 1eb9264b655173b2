"""A stand-in for Triton's `triton_python_backend_utils`, following its documented API.

Covers what a Python-backend model uses: Tensor, InferenceRequest (inputs, response sender,
cancellation), InferenceResponse, TritonError with its codes, TritonModelException, the
TRITONSERVER_* flags and the config helpers. It is as strict as Triton where Triton is strict:
a response sender refuses to send after the final flag, and tensors must be numpy arrays.
"""
from __future__ import annotations

import json
import threading

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_NUMPY = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class TritonModelException(Exception):
    """Raised by the backend utilities (and by models, to fail initialize)."""


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, \
        CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    def __init__(self, name: str, array) -> None:
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"Tensor {name!r}: expected a numpy array, got "
                                       f"{type(array).__name__}")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class InferenceResponse:
    def __init__(self, output_tensors=None, error: TritonError | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class InferenceResponseSender:
    """Delivers a decoupled model's responses to `deliver(response, flags)`."""

    def __init__(self, deliver, cancelled: threading.Event) -> None:
        self._deliver = deliver
        self._cancelled = cancelled
        self._closed = False
        self._lock = threading.Lock()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            if self._closed:
                raise TritonModelException("Unable to send response. Response sender has been "
                                           "closed.")
            if response is None and flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                raise TritonModelException("a response may be omitted only with the final flag")
            if response is not None and not isinstance(response, InferenceResponse):
                raise TritonModelException(f"send() takes an InferenceResponse, got "
                                           f"{type(response).__name__}")
            if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self._closed = True
        self._deliver(response, flags)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()


class InferenceRequest:
    def __init__(self, inputs: list[Tensor], request_id: str = "", parameters: dict | None = None,
                 sender: InferenceResponseSender | None = None,
                 cancelled: threading.Event | None = None) -> None:
        self._inputs = list(inputs)
        self._request_id = request_id
        self._parameters = parameters or {}
        self._sender = sender
        self._cancelled = cancelled or threading.Event()

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException("get_response_sender() is only for decoupled models")
        return self._sender

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((c for c in model_config.get("input", []) if c["name"] == name), None)


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((c for c in model_config.get("output", []) if c["name"] == name), None)


def triton_string_to_numpy(triton_type: str):
    return _NUMPY[triton_type]


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))
