"""--l2-prefetch-mb (kernels/prefetch.py): which weights a decode launch prefetches, its extra
programs in the grid, and the SM 90 instruction in its cubin, after the PDL wait. tests/builder/test_kernels_program.py runs such a program against the reference
backend (Triton's interpreter, where nothing is prefetched)."""
import json
import subprocess

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kiln_testing import make_tiny_checkpoint  # noqa: E402

from kiln.builder.checkpoint import open_checkpoint  # noqa: E402
from kiln.builder.errors import KilnError  # noqa: E402
from kiln.builder.ir import dtype_size  # noqa: E402
from kiln.builder.kernels import compile_plan, prefetch  # noqa: E402
from kiln.builder.kernels.symbols import evaluate  # noqa: E402
from kiln.builder.models import BuildConfig, ModelConfig, build_graph  # noqa: E402
from kiln.builder.passes import run_pipeline  # noqa: E402


def plan_for(tmp_path_factory, mb: int):
    path = make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))
    build = BuildConfig(dtype="bfloat16", max_batch_size=4, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=16, targets=[90], l2_prefetch_mb=mb)
    with open_checkpoint(path) as ckpt:
        model = ModelConfig.from_hf(ckpt.hf_config)
        return run_pipeline(build_graph(model, build, ckpt), build), build


def nbytes(graph, name):
    value = graph.values[name]
    size = dtype_size(value.dtype)
    for dim in value.shape:
        size *= int(dim)
    return size


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return plan_for(tmp_path_factory, 1)


def test_next_weights_are_the_following_linears_up_to_the_budget(plan):
    graph, _ = plan
    attention = [node for node in graph.nodes if node.op == "attention"]
    first = attention[0]
    after = graph.nodes[graph.nodes.index(first) + 1:graph.nodes.index(attention[1])]
    weights = [name for node in after if node.op in prefetch.LINEARS for name in node.inputs[1:]
               if graph.values[name].kind == "weight"]
    assert len(weights) >= 2  # the o-projection's and the MLP's
    whole = prefetch.next_weights(graph, first, 1 << 30)
    assert whole == [(name, nbytes(graph, name)) for name in weights][:prefetch.MAX_RANGES]
    # A budget that ends inside the second weight: the first whole, the second cut to 16 bytes.
    budget = nbytes(graph, weights[0]) + 1000
    assert prefetch.next_weights(graph, first, budget) == [(weights[0], nbytes(graph, weights[0])),
                                                            (weights[1], 992)]
    assert prefetch.next_weights(graph, first, 15) == []
    # The last layer's attention: its own linears only, then nothing (the LM head comes after
    # the final norm and no attention: it is fetched too, budget allowing).
    names = [name for name, _ in prefetch.next_weights(graph, attention[-1], 1 << 30)]
    assert all(not name.startswith("layers.0.") for name in names)


def test_prefetch_rows_only_in_small_decode_steps():
    rows = prefetch.prefetch_rows_formula(8, "S")
    assert evaluate(rows, {"BD": 1, "T": 1, "S": 4}) * 8 * 4 >= prefetch.PREFETCH_PROGRAMS
    assert evaluate(rows, {"BD": 16, "T": 16, "S": 2}) == 4
    assert evaluate(rows, {"BD": 17, "T": 17, "S": 1}) == 0  # past PREFETCH_MAX_TOKENS
    assert evaluate(rows, {"BD": 0, "T": 9, "S": 1}) == 0  # a prompt chunk alone: no decodes


def test_decode_launch_takes_the_ranges_and_more_rows(plan, tmp_path):
    graph, build = plan
    bundle = compile_plan(graph, build)
    header = bundle.header
    kernels = header["kernels"]
    decodes = [step for step in header["program"] if step["kind"] == "kernel"
               and kernels[step["kernel"]]["fn"].endswith(".paged_decode_kernel")]
    assert len(decodes) == sum(node.op == "attention" for node in graph.nodes)
    derived = dict(header["derived"])
    for step in decodes:
        rows = step["grid"][0]
        assert rows.startswith("BD + ")
        assert derived[rows[len("BD + "):]].startswith("(BD > 0 and T <= 16)")
        args = step["args"]
        weights = [a["weight"] for a in args if "weight" in a]
        sizes = [int(a["i32"]) for a in args if a.get("i32", "").isdigit()]
        assert weights and sizes == [nbytes(graph, w) for w in weights]  # all fit in 1 MiB
        meta = kernels[step["kernel"]]
        assert meta["constexprs"]["PREFETCH"] == len(weights)
    # The cubin asks L2 for the bytes after the PDL wait (ACQBULK): Hopper's bulk prefetch
    # (UBLKPF) in its SASS.
    meta = kernels[decodes[0]["kernel"]]
    cubin = tmp_path / "decode.cubin"
    cubin.write_bytes(bundle.blobs[meta["sm"]["90"]["blob"]])
    sass = _sass(cubin)
    if sass is not None:
        assert 0 <= sass.find("ACQBULK") < sass.find("UBLKPF.L2")


def _sass(cubin):
    from pathlib import Path

    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    return subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout


def test_without_the_option_the_decode_launch_is_as_before(tmp_path_factory):
    graph, build = plan_for(tmp_path_factory, 0)
    header = compile_plan(graph, build).header
    kernels = header["kernels"]
    for step in header["program"]:
        if step["kind"] == "kernel" and kernels[step["kernel"]]["fn"].endswith(
                ".paged_decode_kernel"):
            assert step["grid"][0] == "BD"
            assert not any("weight" in a for a in step["args"])
            assert kernels[step["kernel"]]["constexprs"]["PREFETCH"] == 0
    assert not any(meta["constexprs"].get("PREFETCH") for meta in kernels.values())


def test_bad_budget_is_refused():
    with pytest.raises(KilnError, match="--l2-prefetch-mb must be 0 to 1024"):
        BuildConfig(l2_prefetch_mb=-1)
    assert json.loads(json.dumps(BuildConfig(l2_prefetch_mb=24).to_json()))["l2_prefetch_mb"] == 24
