"""Format v1 round trips: every dtype and edge case, alignment, order, ties, atomic writes."""
import os

import pytest
import torch
import xxhash

import litcore
import litfile
from conftest import ALL_DTYPES, same, sample


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_round_trip_every_dtype(tmp, dtype):
    tensors = {"matrix": sample(dtype), "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4)),
               "vector": sample(dtype, (7,), seed=1)}
    litcore.save(tensors, tmp / "t.lit")
    with litcore.Store(tmp / "t.lit") as store:
        assert store.keys() == list(tensors)
        for name, t in tensors.items():
            assert same(store[name], t), name
            assert store.info(name).dtype == dtype


def test_every_tensor_is_page_aligned(tmp):
    tensors = {f"t{i}": torch.randn(i * 37 + 1) for i in range(20)}
    tensors["bytes"] = torch.ones(3, dtype=torch.uint8)
    litcore.save(tensors, tmp / "a.lit")
    with litcore.Store(tmp / "a.lit") as store:
        for name in store:
            assert store.info(name).offset % 4096 == 0
            assert store[name].data_ptr() % 4096 == 0
    raw = litfile.parse((tmp / "a.lit").read_bytes())
    assert raw.data_offset % 4096 == 0 and raw.file_size % 4096 == 0


def test_order_is_kept_and_data_is_contiguous_in_that_order(tmp):
    names = ["z.weight", "a.weight", "m.bias", "b.weight"]
    litcore.save({n: torch.randn(1000) for n in names}, tmp / "o.lit")
    with litcore.Store(tmp / "o.lit") as store:
        assert store.keys() == names
        offsets = [store.info(n).offset for n in names]
        assert offsets == sorted(offsets)


def test_non_contiguous_inputs_are_written_contiguous(tmp):
    base = torch.randn(6, 8)
    tensors = {"t": base.t(), "strided": base[::2, 1::3], "expanded": torch.randn(1, 4).expand(5, 4)}
    litcore.save(tensors, tmp / "nc.lit")
    with litcore.Store(tmp / "nc.lit") as store:
        for n, t in tensors.items():
            assert torch.equal(store[n], t) and store[n].is_contiguous()


def test_tied_tensors_are_stored_once(tmp):
    w = torch.randn(256, 256)
    litcore.save({"embed.weight": w, "lm_head.weight": w, "other": w.clone()}, tmp / "tied.lit")
    litcore.save({"embed.weight": w, "other": w.clone()}, tmp / "untied.lit")
    assert os.path.getsize(tmp / "tied.lit") == os.path.getsize(tmp / "untied.lit")
    with litcore.Store(tmp / "tied.lit") as store:
        assert store.info("lm_head.weight").alias_of == "embed.weight"
        assert store.info("other").alias_of is None
        assert store["lm_head.weight"].data_ptr() == store["embed.weight"].data_ptr()
        assert torch.equal(store["lm_head.weight"], w)
        assert "lm_head.weight" in store and len(store) == 3


def test_views_with_other_shapes_are_not_aliases(tmp):
    w = torch.randn(4, 4)
    litcore.save({"w": w, "row": w[1], "flat": w.view(16)}, tmp / "v.lit")
    with litcore.Store(tmp / "v.lit") as store:
        assert all(store.info(n).alias_of is None for n in store)
        assert torch.equal(store["row"], w[1]) and torch.equal(store["flat"], w.view(16))


def test_dtype_converts_floating_point_only(tmp):
    tensors = {"f32": torch.randn(4), "f16": torch.randn(4).half(), "i64": torch.arange(4), "b": torch.tensor([True]),
               "f8": torch.randn(4).to(torch.float8_e4m3fn), "u8": torch.arange(4, dtype=torch.uint8)}
    litcore.save(tensors, tmp / "c.lit", dtype="bfloat16")
    with litcore.Store(tmp / "c.lit") as store:
        assert store["f32"].dtype == torch.bfloat16 and torch.equal(store["f32"], tensors["f32"].bfloat16())
        assert store["f16"].dtype == torch.bfloat16
        for n in ("i64", "b", "f8", "u8"):
            assert same(store[n], tensors[n])
        assert '"f32": "float32"' in store.metadata["litcore.original_dtypes"]


@pytest.mark.parametrize("bad", ["int8", "float8_e4m3fn", "nonsense", torch.int32])
def test_dtype_argument_is_checked(tmp, bad):
    with pytest.raises(ValueError, match="dtype"):
        litcore.save({"a": torch.randn(2)}, tmp / "x.lit", dtype=bad)
    assert not (tmp / "x.lit").exists()


def test_metadata_round_trip(tmp):
    meta = {"source": "unit test", "unicode": "héllo ✓", "empty": ""}
    litcore.save({"a": torch.ones(1)}, tmp / "m.lit", metadata=meta)
    with litcore.Store(tmp / "m.lit") as store:
        for k, v in meta.items():
            assert store.metadata[k] == v
        assert store.metadata["litcore.producer"].startswith("litcore ")


def test_checksums_are_xxh64_of_the_data(tmp):
    tensors = {"a": torch.randn(1000), "b": torch.arange(33, dtype=torch.int16), "e": torch.empty(0)}
    litcore.save(tensors, tmp / "x.lit")
    with litcore.Store(tmp / "x.lit") as store:
        for n, t in tensors.items():
            assert store.info(n).checksum == xxhash.xxh64_intdigest(t.numpy().tobytes())
    blob = (tmp / "x.lit").read_bytes()
    raw = litfile.parse(blob)
    assert raw.index_checksum == xxhash.xxh64_intdigest(blob[4096:4096 + raw.index_size])


def test_a_tensor_appended_in_pieces_is_the_tensor_written_whole(tmp):
    """The writer's append (a fused tensor written source by source): same bytes, same
    checksum; a piece past the end is refused; a part-written tensor is never committed."""
    t = torch.arange(3000, dtype=torch.float32).reshape(3, 1000)
    litcore.save({"t": t}, tmp / "whole.lit")
    w = litcore._C.Writer(str(tmp / "pieces.lit"), [("t", "float32", [3, 1000], -1)], {})
    for row in t:  # the hash's state carried across pieces of 4000 bytes
        w.append(0, row.contiguous())
    w.commit()
    with litcore.Store(tmp / "whole.lit") as whole, litcore.Store(tmp / "pieces.lit") as pieces:
        assert torch.equal(pieces["t"], t) and pieces.info("t").checksum == whole.info("t").checksum
        assert pieces.verify() == []

    w = litcore._C.Writer(str(tmp / "part.lit"), [("t", "float32", [3, 1000], -1)], {})
    w.append(0, t[0].contiguous())
    with pytest.raises(ValueError, match="'t': appending 12000 bytes after 4000 passes its 12000"):
        w.append(0, torch.zeros(3000))
    with pytest.raises(ValueError, match="'t' is being appended"):
        w.write(0, t.contiguous())
    with pytest.raises(Exception, match="'t' was only partly written .*4000 of 12000 bytes"):
        w.commit()
    w.abort()
    assert sorted(os.listdir(tmp)) == ["pieces.lit", "whole.lit"]


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 64, 1000, 4097])
def test_native_xxh64_matches_reference(size):
    data = bytes((i * 131 + 7) % 256 for i in range(size))
    assert litcore._C.xxh64(data) == xxhash.xxh64_intdigest(data)


def test_failed_save_leaves_no_file_and_no_temp(tmp):
    tensors = {"a": torch.randn(10), "b": torch.empty(10, device="meta")}
    with pytest.raises(ValueError, match="'b'.*meta"):
        litcore.save(tensors, tmp / "f.lit")
    assert os.listdir(tmp) == []


def test_failed_save_keeps_the_previous_file(tmp):
    litcore.save({"a": torch.ones(3)}, tmp / "f.lit")
    before = (tmp / "f.lit").read_bytes()
    with pytest.raises(TypeError, match="'b'"):
        litcore.save({"a": torch.zeros(3), "b": [1, 2]}, tmp / "f.lit")
    assert (tmp / "f.lit").read_bytes() == before
    assert os.listdir(tmp) == ["f.lit"]


def test_bad_names_and_values_are_refused(tmp):
    with pytest.raises(TypeError, match="str"):
        litcore.save({1: torch.ones(1)}, tmp / "x.lit")
    with pytest.raises(ValueError, match="1..65536 bytes"):
        litcore.save({"": torch.ones(1)}, tmp / "x.lit")
    with pytest.raises(OSError, match="no-such-dir"):
        litcore.save({"a": torch.ones(1)}, tmp / "no-such-dir" / "x.lit")
