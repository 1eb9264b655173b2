"""Lowers a plan (the graph after the pass pipeline, with its memory plan) to a program:
kernel launches and GEMMs whose buffers are references (spec.py) and whose sizes are
expressions over the step's symbols (symbols.py)."""
from __future__ import annotations

import hashlib
import struct

from kiln.builder.ir import Graph
from kiln.builder.kernels import (attention, elementwise, gather, gemm, moe, norm, quant, rope,
                                sampling)
from kiln.builder.kernels.spec import Gemm, KernelSpec, Launch, Ptr, kernel_spec
from kiln.builder.kernels.symbols import STEP_SYMBOLS, check

PLANNERS = {
    "embedding": gather.plan_embedding,
    "gather_last": gather.plan_gather_last,
    "rmsnorm": norm.plan_rmsnorm,
    "add_rmsnorm": norm.plan_add_rmsnorm,
    "head_rmsnorm": norm.plan_head_rmsnorm,
    "layernorm": norm.plan_layernorm,
    "rope": rope.plan_rope,
    "attention": attention.plan_attention,
    "linear": gemm.plan_linear,
    "silu_mul": elementwise.plan_silu_mul,
    "silu": elementwise.plan_silu,
    "gelu_tanh_mul": elementwise.plan_gelu_tanh_mul,
    "gelu_tanh": elementwise.plan_gelu_tanh,
    "scale": elementwise.plan_scale,
    "softcap": elementwise.plan_softcap,
    "add": elementwise.plan_add,
    "mul": elementwise.plan_mul,
    "cast": elementwise.plan_cast,
    "moe": moe.plan_moe,
    "split": lambda node, ctx: None,  # outputs are views of the input: nothing to run
    **quant.PLANNERS,
}


class LoweringContext:
    """What a family's plan_<op> needs: buffer references, strides, rows and launch makers."""

    def __init__(self, graph: Graph, build) -> None:
        if graph.memory_plan is None:
            raise ValueError("the plan has no memory plan: run the plan_memory pass first")
        self.graph = graph
        self.build = build
        self.tokens_per_block = build.tokens_per_block
        self.plan = graph.memory_plan
        self.program: list[Launch | Gemm] = []
        self.constants: dict[str, dict] = {}
        self.scratch_sizes: dict[str, list[str]] = {}
        self.zeroed_scratch: set[str] = set()
        self.derived: dict[str, str] = {}
        self.resident: dict[str, str] = {}  # symbol: the kernel (key) whose programs it counts
        self.select: dict | None = None  # the greedy pick over the logits (sampling.plan_select)
        self.label = ""
        self.next_node = None  # the node after the one being lowered
        self.folded: dict[str, dict] = {}  # output of a kernel left to the next linear (gemm.fold)
        self.epilogues: dict[str, Launch] = {}  # output of a kernel the linear before ran

    # -- values -------------------------------------------------------------------------------
    def dtype(self, name: str) -> str:
        return self.graph.values[name].dtype

    def width(self, name: str) -> int:
        return int(self.graph.values[name].shape[-1])

    def rows(self, name: str) -> str:
        return str(self.graph.values[name].shape[0])

    def row_stride(self, name: str) -> int:
        view = self.plan["views"].get(name)
        return int(view["row_stride"]) if view else self.width(name)

    def ref(self, name: str) -> tuple[dict, int]:
        """(reference, known byte alignment) of a value's first element."""
        kind = self.graph.values[name].kind
        if kind == "input":
            return {"input": name}, 256
        if kind == "weight":
            return {"weight": name}, 256
        offset = self.plan["offsets"][name]
        return {"arena": offset}, offset & -offset if offset else 256

    def ptr(self, name: str) -> Ptr:
        ref, align = self.ref(name)
        return Ptr(ref, self.dtype(name), align)

    def kv(self, layer: int, half: int) -> Ptr:
        """K (half 0) or V (half 1) of one layer, in the cache's storage dtype."""
        return Ptr({"kv": layer, "half": half}, self.build.kv_dtype)

    def const(self, dtype: str, values: list) -> Ptr:
        """A small table uploaded once at load; equal tables share one upload."""
        code = {"float32": "f", "int32": "i"}[dtype]
        digest = hashlib.sha256(struct.pack(f"<{len(values)}{code}", *values)).hexdigest()[:12]
        name = f"{dtype}.{digest}"
        self.constants[name] = {"dtype": dtype, "values": list(values)}
        return Ptr({"const": name}, dtype)

    def scratch(self, name: str, nbytes: str, zeroed: bool = False) -> Ptr:
        """Device scratch shared by every launch that names it (launches run in order); its
        size, an expression over NSM and the build limits, is the largest asked for. `zeroed`:
        it holds zeros at load, and each launch that uses it leaves it so."""
        if zeroed:
            self.zeroed_scratch.add(name)
        sizes = self.scratch_sizes.setdefault(name, [])
        if nbytes not in sizes:
            sizes.append(nbytes)
        return Ptr({"scratch": name}, "float32")

    def global_scratch(self, launch: Launch, programs: str, per_program: int) -> Launch:
        """`launch` given Triton's global scratch (its kernel makes TMA descriptors in the kernel,
        128 bytes each, a program's own): one plan buffer shared by every such launch, sized
        for `programs` (an expression, at most the grid's programs) x `per_program` bytes. The
        executor checks each launch's grid against it."""
        name = "triton_global_scratch"
        self.scratch(name, f"{per_program} * ({programs})")
        launch.global_scratch = name
        return launch

    def derive(self, formula: str) -> str:
        """A per-step symbol computed from the step's symbols; equal formulas share one."""
        for name, existing in self.derived.items():
            if existing == formula:
                return name
        name = f"S{len(self.derived)}"
        check(formula, self.symbols())
        self.derived[name] = formula
        return name

    def resident_programs(self, launch: Launch) -> str:
        """A symbol for how many programs of `launch`'s kernel the GPU runs at once (its
        occupancy a multiprocessor, from its registers, shared memory and warps, times NSM),
        which the plan executor counts at load; one a kernel."""
        for name, key in self.resident.items():
            if key == launch.kernel.key:
                return name
        name = f"R{len(self.resident)}"
        self.resident[name] = launch.kernel.key
        return name

    def symbols(self) -> set[str]:
        """The names an expression of the plan may read."""
        return set(STEP_SYMBOLS) | set(self.resident) | set(self.derived)

    # -- program ------------------------------------------------------------------------------
    def launch(self, fn, grid: tuple, args: dict, constexprs: dict, num_warps: int,
               num_stages: int = 1, when: str | None = None) -> None:
        self.program.append(self.make_launch(fn, grid, args, constexprs, num_warps, num_stages,
                                             when))

    def make_launch(self, fn, grid: tuple, args: dict, constexprs: dict, num_warps: int,
                    num_stages: int = 1, when: str | None = None, min_sm: int = 0) -> Launch:
        """A checked launch, not yet in the program (e.g. a GEMM's alternative); `min_sm`: its
        kernel compiles for SM min_sm and newer only (KernelSpec.min_sm: a GEMM alternative's)."""
        spec, json_args = kernel_spec(fn, args, constexprs, num_warps, num_stages)
        spec.min_sm = min_sm
        grid3 = tuple(str(g) for g in grid) + ("1",) * (3 - len(grid))
        names = self.symbols()
        for g in grid3:
            check(g, names)
        for a in json_args:
            if "i32" in a:
                check(a["i32"], names)
        if when is not None:
            check(when, names)
        return Launch(spec, grid3, json_args, when, self.label)

    def add(self, launch: Launch, when: str | None = None) -> None:
        """Appends a launch make_launch made, taken in the steps where `when` holds (None: in
        every step)."""
        if when is not None:
            check(when, self.symbols())
        launch.when = when
        self.program.append(launch)

    def gemm(self, g: Gemm) -> None:
        g.label = self.label
        self.program.append(g)


def lower(graph: Graph, build) -> LoweringContext:
    ctx = LoweringContext(graph, build)
    last = []  # the last node's launches
    for index, node in enumerate(graph.nodes):
        planner = PLANNERS.get(node.op)
        if planner is None:
            raise ValueError(f"no GPU lowering for op {node.op!r}")
        ctx.label = f"{index}:{node.op}:{node.outputs[0]}"
        ctx.next_node = graph.nodes[index + 1] if index + 1 < len(graph.nodes) else None
        before = len(ctx.program)
        planner(node, ctx)
        last = ctx.program[before:]
    if ctx.folded or ctx.epilogues:
        raise AssertionError("kernels folded into a linear left unplanned: "
                             f"{sorted(ctx.folded) + sorted(ctx.epilogues)}")
    logits = graph.values.get("logits")
    if logits is not None and logits.kind == "output" and logits.dtype == "float32":
        ctx.label = "select:logits"
        ctx.select = sampling.plan_select(ctx, _logits_source(ctx, last))
    return ctx


def _logits_source(ctx: LoweringContext, last: list) -> str:
    """The buffer the greedy pick reads. When the float32 logits are the last node's cast of
    the LM head's 16-bit output, the pick reads that output (the same values, half the bytes;
    nothing runs after the cast to overwrite it) and the cast runs only in steps whose logits
    the host reads (LOGITS, symbols.py): a greedy step writes no float32 logits at all."""
    node = ctx.graph.nodes[-1] if ctx.graph.nodes else None
    if (node is None or node.op != "cast" or node.outputs != ["logits"]
            or ctx.dtype(node.inputs[0]) not in ("bfloat16", "float16")
            or ctx.row_stride(node.inputs[0]) != ctx.width(node.inputs[0])
            or not all(isinstance(step, Launch) and step.when is None for step in last)):
        return "logits"
    for step in last:
        step.when = "LOGITS > 0"
    return node.inputs[0]


def launches_of(ctx: LoweringContext) -> list[Launch]:
    """Every launch of the program, the GEMMs' prologues, epilogues and alternatives included."""
    return [launch for step in ctx.program
            for launch in (step.launches() if isinstance(step, Gemm) else [step])]


def kernels_of(ctx: LoweringContext) -> dict[str, KernelSpec]:
    return {launch.kernel.key: launch.kernel for launch in launches_of(ctx)}


def program_json(ctx: LoweringContext) -> list[dict]:
    return [step.to_json() for step in ctx.program]

