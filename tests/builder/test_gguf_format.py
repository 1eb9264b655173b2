"""The GGUF header reader (builder/checkpoint/gguf_format.py) against gguf's own GGUFReader."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from kiln.builder.checkpoint.gguf_format import GGUFFile, Truncated
from kiln_testing import write_gguf_tensors


def reference_value(field):
    """A gguf ReaderField as the builder reads metadata: str, int, bool, float or a list."""
    def part(index, kind):
        data = field.parts[index]
        if kind == V.STRING:
            return bytes(data).decode("utf-8", errors="replace")
        if kind == V.FLOAT32:
            return float(str(data[0]))
        return data.tolist()[0]

    if field.types[0] == V.ARRAY:
        return [part(i, field.types[-1]) for i in field.data]
    return part(field.data[0], field.types[0])


def write(path, endianess=gguf.GGUFEndian.LITTLE, alignment=None):
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 1e-5)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo \u2581world")
    writer.add_array("t.ints", [3, 1, 4, 1, 5])
    writer.add_array("t.floats", [0.5, 1e-6, -2.25])
    writer.add_array("t.strs", ["a", "", "\u0120the", "<|im_end|>"] * 50)
    writer.add_array("t.bools", [True, False])
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    tensors = {"a.f32": (rng.standard_normal((3, 64)).astype(np.float32), Q.F32),
               "b.f16": (rng.standard_normal((5, 32)).astype(np.float16), Q.F16),
               "c.q8_0": (rng.standard_normal((4, 64)).astype(np.float32), Q.Q8_0),
               "d.q4_1": (rng.standard_normal((2, 3, 64)).astype(np.float32), Q.Q4_1),
               "e.vec": (rng.standard_normal(7).astype(np.float32), Q.F32)}
    write_gguf_tensors(writer, tensors)


def assert_same_as_gguf(path, keep=lambda key: True):
    ours = GGUFFile(path, keep)
    theirs = gguf.GGUFReader(path)
    expected = {key: reference_value(field) for key, field in theirs.fields.items()
                if not key.startswith("GGUF.") and keep(key)}
    assert ours.fields == expected
    assert {k: type(v) for k, v in ours.fields.items()} == {k: type(v) for k, v in expected.items()}
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, their in zip(ours.tensors, theirs.tensors):
        assert mine.tensor_type == int(their.tensor_type)
        assert mine.dims == tuple(int(d) for d in their.shape)
        data = ours.data(mine)
        assert data.dtype == their.data.dtype and data.shape == their.data.shape
        np.testing.assert_array_equal(data, their.data)
        np.testing.assert_array_equal(gguf.quants.dequantize(data, their.tensor_type),
                                      gguf.quants.dequantize(their.data, their.tensor_type))
    return ours


def test_every_value_type_and_tensor_as_gguf_reads_them(tmp_path):
    write(tmp_path / "m.gguf")
    ours = assert_same_as_gguf(tmp_path / "m.gguf")
    assert ours.fields["t.f32"] == 1e-05 and ours.fields["t.u64"] == 2**63 + 5
    assert ours.fields["t.str"] == "héllo \u2581world"
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 300


def test_big_endian_and_custom_alignment(tmp_path):
    write(tmp_path / "be.gguf", gguf.GGUFEndian.BIG)
    assert_same_as_gguf(tmp_path / "be.gguf")
    write(tmp_path / "al.gguf", alignment=64)
    ours = assert_same_as_gguf(tmp_path / "al.gguf")
    assert all(t.offset % 64 == 0 for t in ours.tensors)


def test_values_not_kept_are_read_past(tmp_path):
    write(tmp_path / "m.gguf")
    def keep(key):
        return not key.startswith(("tokenizer.ggml.", "t.strs", "t.ints")) or key.endswith("_id")
    ours = assert_same_as_gguf(tmp_path / "m.gguf", keep)
    assert "tokenizer.ggml.tokens" not in ours.fields
    assert ours.fields["tokenizer.ggml.eos_token_id"] == 2


def test_a_cut_file_says_how_long_it_must_be(tmp_path):
    write(tmp_path / "m.gguf")
    whole = (tmp_path / "m.gguf").read_bytes()
    complete = GGUFFile(tmp_path / "m.gguf")
    end = max(t.offset + complete.data(t).nbytes for t in complete.tensors)  # then padding
    cut = tmp_path / "cut.gguf"
    for size in (5, 12, 30, 200, 1000, 3000, end - 1):
        cut.write_bytes(whole[:size])
        with pytest.raises(Truncated) as error:
            GGUFFile(cut)
        assert size < error.value.needed <= end


def test_damaged_headers_raise_value_errors(tmp_path):
    write(tmp_path / "m.gguf")
    whole = bytearray((tmp_path / "m.gguf").read_bytes())
    bad = tmp_path / "bad.gguf"
    first_type = 24 + 8 + len("general.architecture")  # the header, then the first key
    for offset, value, message in ((0, b"GGUX", "magic"), (4, b"\x07", "version 7"),
                                   (first_type, b"\x0d", "unknown metadata value type 13")):
        damaged = bytearray(whole)
        damaged[offset:offset + len(value)] = value
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=message):
            GGUFFile(bad)
