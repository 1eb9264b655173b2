"""A cubin compiled ahead of time in a process that sees no GPU, loaded and run through the CUDA
driver API (kiln._core.gpu.launch_cubin: cuModuleLoadData / cuLaunchKernel through
cudaGetDriverEntryPoint), against the torch reference."""
import json
import os
import subprocess
import sys

import pytest
import torch

import kernel_checks as kc

pytestmark = pytest.mark.gpu

COMPILE = r"""
import json, sys, torch
from kiln.builder.kernels import aot, gather, norm
from kiln.builder.kernels.spec import F32, Ptr, kernel_spec, pow2
assert not torch.cuda.is_available(), "the compiling process must not see a GPU"
sm, width, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
specs = {
    "rmsnorm": kernel_spec(norm.rmsnorm_kernel,
        dict(out_ptr=Ptr({}, "bfloat16"), x_ptr=Ptr({}, "bfloat16"), w_ptr=Ptr({}, "bfloat16"),
             eps=F32(1e-6)),
        dict(X_STRIDE=width, OUT_STRIDE=width, H=width, BLOCK=pow2(width)), num_warps=8)[0],
    "gather": kernel_spec(gather.gather_rows_kernel,
        dict(out_ptr=Ptr({}, "bfloat16"), src_ptr=Ptr({}, "bfloat16"), index_ptr=Ptr({}, "int32")),
        dict(SRC_STRIDE=width, OUT_STRIDE=width, WIDTH=width, BLOCK=1024), num_warps=4)[0],
}
for name, spec in specs.items():
    c = aot.compile_spec(spec, sm, use_cache=False)
    open(f"{out}/{name}.cubin", "wb").write(c.cubin)
    json.dump(c.meta, open(f"{out}/{name}.json", "w"))
"""


@pytest.fixture(scope="module")
def cubins(sm, tmp_path_factory):
    out = tmp_path_factory.mktemp("cubins")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(sm), "4096", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: ((out / f"{name}.cubin").read_bytes(), json.loads((out / f"{name}.json").read_text()))
            for name in ("rmsnorm", "gather")}


def test_aot_rmsnorm_cubin_runs_through_the_driver_api(core, sm, cubins):
    from kiln.builder.kernels.aot import cubin_sm

    cubin, meta = cubins["rmsnorm"]
    assert cubin_sm(cubin) == sm
    g = torch.Generator().manual_seed(4)
    x = torch.randn(77, 4096, generator=g).to(torch.bfloat16).cuda()
    w = (torch.randn(4096, generator=g) * 0.2 + 1).to(torch.bfloat16).cuda()
    out = torch.full_like(x, float("nan"))
    core.gpu.launch_cubin(cubin, meta["name"], [77, 1, 1], meta["num_warps"], meta["shared"],
                          [("ptr", out.data_ptr()), ("ptr", x.data_ptr()), ("ptr", w.data_ptr()),
                           ("f32", 1e-6)], meta["num_extra_params"])
    (ref,) = kc._ref("rmsnorm", [x, w], {"eps": 1e-6})
    assert kc.rel_err(out, ref) < kc.TOL[torch.bfloat16]


def test_aot_gather_cubin_copies_rows_exactly(core, cubins):
    cubin, meta = cubins["gather"]
    table = torch.randn(1000, 4096, dtype=torch.bfloat16, device="cuda")
    index = torch.randint(0, 1000, (33,), dtype=torch.int32, device="cuda")
    out = torch.full((33, 4096), float("nan"), dtype=torch.bfloat16, device="cuda")
    core.gpu.launch_cubin(cubin, meta["name"], [33, 1, 1], meta["num_warps"], meta["shared"],
                          [("ptr", out.data_ptr()), ("ptr", table.data_ptr()),
                           ("ptr", index.data_ptr())], meta["num_extra_params"])
    assert torch.equal(out, table[index.long()])


def test_device_count_and_expressions(core):
    assert core.gpu.device_count() >= 1
    assert core.gpu.eval_expr("T // 16 + B", {"T": 33, "B": 2}) == 4
