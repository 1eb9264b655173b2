"""A stand-in for Triton Inference Server's side of a model repository, for tests.

Loads each model's config.pbtxt against Triton's ModelConfig protobuf schema (from the
tritonclient package), hands Python-backend models their config as JSON the way Triton does,
checks every request and response against the config (names, data types, shapes with the batch
dimension), runs one model instance's execute() calls one at a time, and runs ensembles step
by step in data-dependency order, with a decoupled step's every response flowing on through the
steps after it. Cancelling an ensemble request cancels its composing requests.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import triton_python_backend_utils as pb_utils  # noqa: E402

RESPONSE_TIMEOUT_S = 60.0


def model_config_pb2():
    """tritonclient's generated model_config_pb2, loaded without the grpc package around it."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("kiln_tests_model_config_pb2", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
    return module


def parse_config(path: Path):
    """config.pbtxt as a ModelConfig message; fails on any field the schema lacks."""
    from google.protobuf import text_format

    return text_format.Parse(Path(path).read_text(), model_config_pb2().ModelConfig())


def data_type_name(value: int) -> str:
    return model_config_pb2().DataType.Name(value)


class ServerError(Exception):
    """An error response, as a client would see it."""

    def __init__(self, message: str, code: int = pb_utils.TritonError.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Model:
    name: str
    config: object                  # ModelConfig message
    config_json: dict
    instance: object = None         # TritonPythonModel, None for an ensemble
    lock: threading.Lock = field(default_factory=threading.Lock)
    steps: list = field(default_factory=list)   # ensemble steps in dependency order

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled

    def io(self, kind: str) -> dict:
        return {t.name: t for t in (self.config.input if kind == "input" else self.config.output)}


def _check_tensor(model: Model, kind: str, name: str, array: np.ndarray) -> None:
    specs = model.io(kind)
    if name not in specs:
        raise ServerError(f"{model.name}: unexpected {kind} {name!r}", pb_utils.TritonError.INVALID_ARG)
    spec = specs[name]
    want = pb_utils.triton_string_to_numpy(data_type_name(spec.data_type))
    if np.dtype(array.dtype) != np.dtype(want):
        raise ServerError(f"{model.name}: {kind} {name!r} is {array.dtype}, config says "
                          f"{data_type_name(spec.data_type)}", pb_utils.TritonError.INVALID_ARG)
    dims = list(spec.dims)
    shape = list(array.shape)
    if model.config.max_batch_size > 0:
        if not shape or not 1 <= shape[0] <= model.config.max_batch_size:
            raise ServerError(f"{model.name}: {kind} {name!r} has shape {shape}; the batch "
                              f"dimension must be 1..{model.config.max_batch_size}")
        shape = shape[1:]
    if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
        raise ServerError(f"{model.name}: {kind} {name!r} has shape {list(array.shape)}, config "
                          f"says {dims} (after the batch dimension)", pb_utils.TritonError.INVALID_ARG)


def _wire(array: np.ndarray) -> np.ndarray:
    """A tensor as Triton serializes it: BYTES elements as bytes (str is sent as UTF-8)."""
    if array.dtype != np.object_:
        return array
    out = np.empty(array.shape, dtype=np.object_)
    for index, value in np.ndenumerate(array):
        out[index] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return out


class StubTriton:
    """Serves a model repository in-process. Use as a context manager (unloads the models)."""

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)
        self.models: dict[str, Model] = {}
        self._ids = itertools.count(1)
        for config_path in sorted(self.repository.glob("*/config.pbtxt")):
            self._load(config_path.parent)
        for model in self.models.values():
            if model.config.platform == "ensemble":
                model.steps = self._check_ensemble(model)

    # -- loading ----------------------------------------------------------------------------
    def _load(self, folder: Path) -> None:
        from google.protobuf import json_format

        config = parse_config(folder / "config.pbtxt")
        if config.name != folder.name:
            raise ServerError(f"{folder}: config name {config.name!r} differs from the folder name")
        versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ServerError(f"{folder}: no version directory")
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
        model = Model(config.name, config, as_json)
        if config.backend == "python":
            path = folder / str(versions[-1]) / "model.py"
            spec = importlib.util.spec_from_file_location(f"triton_model_{config.name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            model.instance = module.TritonPythonModel()
            if hasattr(model.instance, "initialize"):
                model.instance.initialize({
                    "model_config": json.dumps(as_json), "model_instance_kind": "CPU",
                    "model_instance_device_id": "0", "model_repository": str(folder),
                    "model_version": str(versions[-1]), "model_name": config.name})
        elif config.platform != "ensemble":
            raise ServerError(f"{folder}: the stub runs Python-backend models and ensembles only")
        self.models[config.name] = model

    def _check_ensemble(self, ensemble: Model) -> list:
        """Triton's load-time checks of an ensemble; returns its steps in dependency order."""
        types = {t.name: t.data_type for t in ensemble.config.input}
        pending = list(ensemble.config.ensemble_scheduling.step)
        ordered = []
        while pending:
            ready = [s for s in pending if all(v in types for v in s.input_map.values())]
            if not ready:
                raise ServerError(f"{ensemble.name}: steps {[s.model_name for s in pending]} "
                                  "wait on tensors nothing produces")
            for step in ready:
                model = self.models.get(step.model_name)
                if model is None:
                    raise ServerError(f"{ensemble.name}: step model {step.model_name!r} is not loaded")
                inputs, outputs = model.io("input"), model.io("output")
                for key, tensor in step.input_map.items():
                    if key not in inputs or inputs[key].data_type != types[tensor]:
                        raise ServerError(f"{ensemble.name}: {tensor!r} does not fit input "
                                          f"{key!r} of {model.name}")
                missing = [n for n, t in inputs.items() if not t.optional and n not in step.input_map]
                if missing:
                    raise ServerError(f"{ensemble.name}: required inputs {missing} of {model.name} "
                                      "are not mapped")
                for key, tensor in step.output_map.items():
                    if key not in outputs:
                        raise ServerError(f"{ensemble.name}: {model.name} has no output {key!r}")
                    types[tensor] = outputs[key].data_type
                pending.remove(step)
                ordered.append(step)
        for out in ensemble.config.output:
            if types.get(out.name) != out.data_type:
                raise ServerError(f"{ensemble.name}: output {out.name!r} is not produced with its type")
        return ordered

    # -- requests ---------------------------------------------------------------------------
    def infer(self, model_name: str, inputs: dict[str, np.ndarray],
              cancelled: threading.Event | None = None):
        """Yields each response's outputs (name -> array); raises ServerError for an error
        response. Set `cancelled` to cancel the request."""
        model = self.models.get(model_name)
        if model is None:
            raise ServerError(f"unknown model {model_name!r}", pb_utils.TritonError.NOT_FOUND)
        cancelled = cancelled or threading.Event()
        for name, array in inputs.items():
            _check_tensor(model, "input", name, array)
        missing = [n for n, t in model.io("input").items() if not t.optional and n not in inputs]
        if missing:
            raise ServerError(f"{model_name}: missing required inputs {missing}",
                              pb_utils.TritonError.INVALID_ARG)
        if model.config.platform == "ensemble":
            yield from self._run_steps(model, 0, dict(inputs), cancelled)
        else:
            yield from self._run_python(model, inputs, cancelled)

    def _run_steps(self, ensemble: Model, i: int, pool: dict, cancelled: threading.Event):
        if i == len(ensemble.steps):
            yield {t.name: pool[t.name] for t in ensemble.config.output}
            return
        if cancelled.is_set():  # Triton checks for cancellation between ensemble steps
            raise ServerError("request cancelled", pb_utils.TritonError.CANCELLED)
        step = ensemble.steps[i]
        step_inputs = {k: pool[v] for k, v in step.input_map.items() if v in pool}
        model = self.models[step.model_name]
        for name, array in step_inputs.items():
            _check_tensor(model, "input", name, array)
        for outputs in self._run_python(model, step_inputs, cancelled):
            missing = [k for k in step.output_map if k not in outputs]
            if missing:
                raise ServerError(f"{model.name} sent no {missing} that {ensemble.name} needs")
            produced = {v: outputs[k] for k, v in step.output_map.items()}
            yield from self._run_steps(ensemble, i + 1, pool | produced, cancelled)

    def _run_python(self, model: Model, inputs: dict, cancelled: threading.Event):
        """The outputs of each response to one request, checked against the model's config and
        as they come off the wire (strings as UTF-8 bytes)."""
        delivered: queue.Queue = queue.Queue()
        sender = pb_utils.InferenceResponseSender(lambda r, f: delivered.put((r, f)), cancelled) \
            if model.decoupled else None
        request = pb_utils.InferenceRequest(
            [pb_utils.Tensor(k, v) for k, v in inputs.items()], request_id=str(next(self._ids)),
            sender=sender, cancelled=cancelled)
        with model.lock:  # one instance runs one execute() at a time
            result = model.instance.execute([request])
        if model.decoupled:
            if result is not None:
                raise ServerError(f"{model.name}: a decoupled model's execute must return None")
        else:
            if not isinstance(result, list) or len(result) != 1 or result[0] is None:
                raise ServerError(f"{model.name}: execute must return one response per request")
            delivered.put((result[0], pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL))
        while True:
            try:
                response, flags = delivered.get(timeout=RESPONSE_TIMEOUT_S)
            except queue.Empty:
                raise ServerError(f"{model.name}: no response within {RESPONSE_TIMEOUT_S} s") from None
            if response is not None:
                if response.has_error():
                    raise ServerError(response.error().message(), response.error().code())
                for t in response.output_tensors():
                    _check_tensor(model, "output", t.name(), t.as_numpy())
                yield {t.name(): _wire(t.as_numpy()) for t in response.output_tensors()}
            if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                return

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        for model in self.models.values():
            if model.instance is not None and hasattr(model.instance, "finalize"):
                model.instance.finalize()
        self.models.clear()

    def __enter__(self) -> "StubTriton":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
