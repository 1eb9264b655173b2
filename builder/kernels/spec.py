"""What a plan lowers to: kernel launches and GEMMs whose arguments are references.

A reference names a buffer the C++ plan executor owns, resolved once at load:
`{"arena": byte_offset}` (activation arena), `{"input": name}` (a step input),
`{"weight": name}`, `{"kv": layer, "half": 0|1}` (K or V of one layer in the paged cache),
`{"scratch": name, "offset": bytes}`, `{"const": name}` (a small table uploaded at load).
Scalars are `{"i32": expr}` (an expression over the step's symbols, see symbols.py) or
`{"f32": number}`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field

from kiln.builder.kernels import pdl

TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                "int32": "i32", "int64": "i64", "int8": "i8", "uint8": "u8",
                "float8_e4m3fn": "fp8e4nv"}


@dataclass(slots=True)
class Ptr:
    """A pointer argument: what it refers to, its element dtype, its known byte alignment."""
    ref: dict
    dtype: str
    align: int = 256


@dataclass(slots=True)
class I32:
    expr: str | int


@dataclass(slots=True)
class F32:
    value: float


@dataclass(slots=True)
class KernelSpec:
    """One specialization of a Triton kernel: everything triton.compile needs but the target."""
    fn: object  # triton JITFunction
    signature: dict[str, str]
    constexprs: dict
    divisible: tuple[int, ...]  # indices of pointer params known to be 16-byte aligned
    num_warps: int
    num_stages: int
    # The oldest SM it compiles for (a Hopper kernel: 90), 0: every target. An engine holds it
    # for its targets from min_sm on; on an older GPU the executor leaves out the GEMM
    # alternatives that launch it.
    min_sm: int = 0

    @property
    def qualname(self) -> str:
        return f"{self.fn.fn.__module__}.{self.fn.fn.__name__}"

    def describe(self) -> dict:
        out = {"fn": self.qualname, "signature": self.signature, "constexprs": self.constexprs,
               "divisible": list(self.divisible), "num_warps": self.num_warps,
               "num_stages": self.num_stages}
        if self.min_sm:
            out["min_sm"] = self.min_sm
        return out

    @property
    def key(self) -> str:
        """A short id, equal for equal specializations of the same source."""
        data = json.dumps([self.describe(), source_key(self.fn)], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Launch:
    kernel: KernelSpec
    grid: tuple[str, str, str]
    args: list[dict]
    when: str | None = None
    label: str = ""
    # The plan scratch buffer a kernel that needs Triton's global scratch (TMA descriptors made
    # in the kernel) gets as its first trailing pointer, sized for the grid's programs
    # (LoweringContext.global_scratch).
    global_scratch: str | None = None

    def to_json(self) -> dict:
        out = {"kind": "kernel", "label": self.label, "kernel": self.kernel.key,
               "grid": list(self.grid), "args": self.args, "when": self.when}
        if self.global_scratch is not None:
            out["global_scratch"] = self.global_scratch
        return out


@dataclass(slots=True)
class Gemm:
    """out[M, N] = a[M, K] @ w[N, K].T (+ bias[N]), row-major, through cuBLASLt.

    `dtype` is the output's (and bias's) type. For FP8, `in_dtype` is "float8_e4m3fn" (a and w)
    and `a_scale`, `w_scale` point at float32 per-tensor dequantization scales:
    out = (a_scale * w_scale) * (a @ w.T) (+ bias).

    `alternatives`: launches that compute the same output for M <= max_m, each
    {"max_m": int, "steps": [Launch]}; the executor times them against cuBLASLt per M and runs
    the fastest. One for many rows also has "min_m" (> 1: it takes min_m <= M <= max_m), and
    is chosen per band of M (powers of two), not per M; one with "preferred_from_m" runs from
    that many rows untimed against cuBLASLt (the kernel's own knowledge of where a run finds it
    faster than the load's short timings rank it; PlanExecutor.kernels_from_rows overrides).
    `residual` (a linear with one, ops/linear.py; `ldr` its row stride): added to the product
    rounded to `dtype` (cuBLASLt's C with beta 1), each alternative adding it likewise.
    `prologue`: launches that write cuBLASLt's operands (a weight dequantized into scratch, or
    a norm or SiLU-mul folded into the GEMM, which each alternative runs or computes itself);
    they run, and are timed, only when cuBLASLt runs. `epilogue`: launches after cuBLASLt (a
    gate/up GEMM's SiLU-mul), likewise run or computed by each alternative."""
    a: dict
    w: dict
    out: dict
    bias: dict | None
    m: str | int
    n: int
    k: int
    lda: int
    ldc: int
    dtype: str
    label: str = ""
    in_dtype: str | None = None
    a_scale: dict | None = None
    w_scale: dict | None = None
    alternatives: list[dict] = field(default_factory=list)
    prologue: list[Launch] = field(default_factory=list)
    epilogue: list[Launch] = field(default_factory=list)
    residual: dict | None = None
    ldr: int = 0

    def to_json(self) -> dict:
        out = {"kind": "gemm", "label": self.label, "a": self.a, "w": self.w, "out": self.out,
               "bias": self.bias, "m": str(self.m), "n": self.n, "k": self.k,
               "lda": self.lda, "ldc": self.ldc, "dtype": self.dtype}
        if self.in_dtype is not None:
            out.update(in_dtype=self.in_dtype, a_scale=self.a_scale, w_scale=self.w_scale)
        if self.residual is not None:
            out.update(residual=self.residual, ldr=self.ldr)
        if self.alternatives:
            out["alternatives"] = [dict({"max_m": alt["max_m"],
                                         "steps": [step.to_json() for step in alt["steps"]]},
                                        **{key: alt[key] for key in ("min_m", "preferred_from_m")
                                           if key in alt})
                                   for alt in self.alternatives]
        if self.prologue:
            out["prologue"] = [step.to_json() for step in self.prologue]
        if self.epilogue:
            out["epilogue"] = [step.to_json() for step in self.epilogue]
        return out

    def launches(self) -> list[Launch]:
        return (self.prologue + self.epilogue
                + [step for alt in self.alternatives for step in alt["steps"]])


def kernel_spec(fn, args: dict, constexprs: dict, num_warps: int, num_stages: int = 1
                ) -> tuple[KernelSpec, list[dict]]:
    """Orders `args` and `constexprs` by the kernel's parameters; returns the spec and the
    launch's JSON arguments (runtime parameters only, in order)."""
    names = list(fn.arg_names)
    unknown = set(args) | set(constexprs)
    unknown -= set(names)
    if unknown:
        raise ValueError(f"{fn.fn.__name__} has no parameters {sorted(unknown)}")
    signature, json_args, divisible = {}, [], []
    for index, name in enumerate(names):
        if name in constexprs or name == pdl.PARAM:  # PDL: set per target by aot.compile_spec
            signature[name] = "constexpr"
            continue
        if name not in args:
            raise ValueError(f"{fn.fn.__name__}: no value for parameter {name}")
        arg = args[name]
        if isinstance(arg, Ptr):
            signature[name] = "*" + TRITON_TYPES[arg.dtype]
            json_args.append(dict(arg.ref))
            if arg.align % 16 == 0:
                divisible.append(index)
        elif isinstance(arg, I32):
            signature[name] = "i32"
            json_args.append({"i32": str(arg.expr)})
        elif isinstance(arg, F32):
            signature[name] = "fp32"
            json_args.append({"f32": float(arg.value)})
        else:
            raise TypeError(f"{fn.fn.__name__}.{name}: {arg!r} is not Ptr, I32 or F32")
    spec = KernelSpec(fn, signature, {k: constexprs[k] for k in names if k in constexprs},
                      tuple(divisible), num_warps, num_stages)
    return spec, json_args


def source_key(fn) -> str:
    """Triton's hash of the kernel's source and what it calls (a source hash under the
    interpreter, whose functions have none)."""
    key = getattr(fn, "cache_key", None)
    if key is None:
        key = hashlib.sha256(inspect.getsource(fn.fn).encode()).hexdigest()
    return key


def pow2(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, (int(n) - 1).bit_length())
