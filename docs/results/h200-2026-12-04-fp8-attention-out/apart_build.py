"""engine-build with the attention output's FP8 quantization left to its own kernel (the
quantize_fuse_producers of before), for an A/B of the fold."""
import sys
import importlib
qfp = importlib.import_module("kiln.builder.passes.quantize_fuse_producers")
_orig = qfp._fused
qfp._fused = lambda producer, quant: None if producer.op == "attention" else _orig(producer, quant)
from kiln.builder.cli import build_main
sys.exit(build_main())
