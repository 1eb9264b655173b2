"""Rounding inside kernels exactly as the torch references round, on the GPU and in Triton's
interpreter (which lacks libdevice and rounds some conversions differently): round half to
even, and float32 to float8_e4m3fn with a static scale (kiln.quantize.pack.to_fp8)."""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from kiln.builder.kernels.direct import interpreting

INTERPRETED = tl.constexpr(interpreting())  # fixed per process: Triton's interpreter or not


@triton.jit
def rint(x):
    """Round half to even. The GPU rounds with cvt.rni; the interpreter has no libdevice, so
    there 1.5 * 2**23 is added and taken away (no fraction bits are left at that size: the
    addition rounds). On the GPU that would let the compiler fuse the product before it into
    an FMA, which rounds the exact product instead of the float32 one the reference rounds."""
    if INTERPRETED:
        return (x + 12582912.0) - 12582912.0
    else:
        return libdevice.rint(x)


@triton.jit
def fma(a, b, c):
    """a * b + c (float32) rounded once, as the GPU's fused multiply-add rounds it. The
    interpreter's tl.fma rounds the product and the sum apart; there the product of the two
    float32 values (exact in float64) and the sum are taken in float64 and rounded to float32,
    as the torch references compute it (kiln.quantize.pack.dequantize_weight)."""
    if INTERPRETED:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def e4m3_grid(x):
    """x (float32, within +-448) rounded to the float8_e4m3fn grid (to nearest even), as the cast
    to it rounds. The GPU's cast rounds by itself. Triton's interpreter drops the carry of a
    mantissa that rounds up into the next power of two (1.996 -> 1.0), so there the rounding is
    done here and the cast is exact: steps of 2**(e - 3), e the exponent (at least -6)."""
    if INTERPRETED:
        e = tl.maximum(tl.floor(tl.log2(tl.maximum(tl.abs(x), 1e-30))), -6.0)
        step = tl.exp2(e - 3.0)
        return rint(x / step) * step
    else:
        return x


@triton.jit
def to_e4m3(y, inv, Q_TYPE: tl.constexpr):
    """y * inv (inv: 1 / scale, correctly rounded) saturated to +-448 and cast to Q_TYPE (e4m3)."""
    return e4m3_grid(tl.minimum(tl.maximum(y * inv, -448.0), 448.0)).to(Q_TYPE)
