"""The GPU check's shards (tests/gpu/shards.py) select every GPU test exactly once, as pytest
itself collects them (no GPU needed to collect)."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))

from shards import SHARDS, main  # noqa: E402


def collected(args: list[str]) -> list[str]:
    """The node ids `pytest -m gpu ARGS` runs."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode in (0, 5), f"pytest {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_shards_run_every_gpu_test_once():
    with ThreadPoolExecutor(4) as pool:
        everything = pool.submit(collected, ["tests/gpu", "tests/quantize/test_gpu.py"])
        shards = dict(zip(SHARDS, pool.map(collected, SHARDS.values())))
    everything = everything.result()
    assert len(everything) > 1000  # the suite, not a collection that went wrong
    seen: dict[str, str] = {}
    for name, ids in shards.items():
        assert ids, f"shard {name} selects no test"
        for node in ids:
            assert node not in seen, f"{node} runs in shards {seen[node]} and {name}"
            seen[node] = name
    assert sorted(seen) == sorted(everything), (
        f"in no shard: {sorted(set(everything) - set(seen))[:5]}; "
        f"not a GPU test: {sorted(set(seen) - set(everything))[:5]}")


def test_shard_names_and_arguments_print(capsys):
    main([])
    assert capsys.readouterr().out.split() == list(SHARDS)
    main(["kernels"])
    assert capsys.readouterr().out.split() == SHARDS["kernels"]
    with pytest.raises(SystemExit, match="no GPU-check shard 'nope'; the shards: attention_a"):
        main(["nope"])
