"""Linear layers as cuBLASLt GEMMs (run by the C++ plan executor, csrc/gpu/gemm.cpp).

Reference: kiln.builder.ops.linear: out[M, N] = x[M, K] @ w[N, K].T (+ bias[N]). M is the
value's row symbol (T or B); the executor picks cuBLASLt's algorithm per M at run time through
cublasLtMatmulAlgoGetHeuristic and remembers it.
"""
from __future__ import annotations

from kiln.builder.kernels.spec import Gemm


def plan_linear(node, ctx):
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) == 3 else None
    (out,) = node.outputs
    n, k = ctx.graph.values[w].shape
    ctx.gemm(Gemm(a=ctx.ref(x)[0], w=ctx.ref(w)[0], out=ctx.ref(out)[0],
                  bias=ctx.ref(bias)[0] if bias else None, m=ctx.rows(out), n=int(n), k=int(k),
                  lda=ctx.row_stride(x), ldc=ctx.row_stride(out), dtype=ctx.dtype(out)))
