"""Plan activation memory: one arena, each activation at a fixed offset, sized for the
largest step the engine accepts (max_num_tokens tokens, max_batch_size sequences).

Values whose lifetimes do not overlap share bytes (greedy first fit in order of definition).
The outputs of `split` are views of their input (row stride = input width), never copies.
The nodes of one GEMM step (a linear, a node before it marked `fold_into_next`, one after it
marked `fold_into_previous`: passes/fold_into_linears.py) run as one: their inputs live to the
step's last node, since a kernel of the step may read them while it writes any of its outputs.
"""
from __future__ import annotations

from kiln.builder.ir import Graph, dtype_size

ALIGN = 256


def _step_end(nodes, i: int) -> int:
    """The last node of the GEMM step node i runs in (itself, when it folds into none)."""
    while nodes[i].attrs.get("fold_into_next") and i + 1 < len(nodes):
        i += 1
    while i + 1 < len(nodes) and nodes[i + 1].attrs.get("fold_into_previous"):
        i += 1
    return i


def dim_value(dim, symbols: dict[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    return int(eval(dim, {"__builtins__": {}}, dict(symbols)))  # "T", "B", "B+1", "MAXBLK"


def numel(shape, symbols: dict[str, int]) -> int:
    n = 1
    for d in shape:
        n *= dim_value(d, symbols)
    return n


def _views(g: Graph) -> dict[str, dict]:
    views = {}
    for node in g.nodes:
        if node.op == "split":
            col = 0
            for out, size in zip(node.outputs, node.attrs["sizes"]):
                views[out] = {"of": node.inputs[0], "col_offset": col}
                col += size
    return views


def _root(name: str, views: dict[str, dict]) -> str:
    while name in views:
        name = views[name]["of"]
    return name


def plan_memory(graph: Graph, build) -> Graph:
    g = graph.copy()
    symbols = {"T": build.max_num_tokens, "B": build.max_batch_size,
               "MAXBLK": build.max_blocks_per_seq}
    views = _views(g)
    activations = [n for n, v in g.values.items() if v.kind in ("activation", "output")]
    last_use = {name: len(g.nodes) if g.values[name].kind == "output" else -1 for name in activations}
    for step, node in enumerate(g.nodes):
        until = _step_end(g.nodes, step)
        for name in node.inputs + node.outputs:
            if name in last_use:
                root = _root(name, views)
                last_use[root] = max(last_use[root], until)

    offsets: dict[str, int] = {}
    live: list[tuple[int, int, str]] = []  # (offset, size, name)
    arena = 0
    for step, node in enumerate(g.nodes):
        for out in node.outputs:
            if out in views:
                continue
            v = g.values[out]
            size = -(-numel(v.shape, symbols) * dtype_size(v.dtype) // ALIGN) * ALIGN
            offset = 0
            for start, length, _ in sorted(live):
                if offset + size <= start:
                    break
                offset = max(offset, start + length)
            offsets[out] = offset
            live.append((offset, size, out))
            arena = max(arena, offset + size)
        live = [(o, s, n) for o, s, n in live if last_use[n] > step]
    for name, view in views.items():
        root = _root(name, views)
        col = view["col_offset"]
        base = view["of"]
        while base in views:
            col += views[base]["col_offset"]
            base = views[base]["of"]
        offsets[name] = offsets[root] + col * dtype_size(g.values[name].dtype)
    g.memory_plan = {
        "arena_bytes": arena,
        "symbols": symbols,
        "offsets": offsets,
        "views": {n: {"of": _root(n, views), "row_stride": g.values[_root(n, views)].shape[-1]}
                  for n in views},
    }
    return g
