"""Engine format v1: writing and loading engine directories."""
from kiln.builder.engine.loader import Engine, EngineConfig, load_engine
from kiln.builder.engine.writer import RANK_FILE, KernelBundle

__all__ = ["Engine", "EngineConfig", "KernelBundle", "RANK_FILE", "load_engine"]
