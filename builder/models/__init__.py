"""Model definitions: each supported architecture declares its network in the IR."""
from kiln.builder.models.config import ARCHITECTURES, BuildConfig, ModelConfig
from kiln.builder.models.llama import build_graph

__all__ = ["ARCHITECTURES", "BuildConfig", "ModelConfig", "build_graph"]
