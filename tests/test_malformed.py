"""Every malformed file raises litcore.FormatError naming the file (and tensor)."""
import struct

import pytest
import torch

import litcore
import litfile


@pytest.fixture
def good(tmp):
    litcore.save({"a.weight": torch.randn(64, 64), "b.bias": torch.arange(10), "tied": torch.zeros(1)}, tmp / "good.lit",
                 metadata={"k": "v"})
    return (tmp / "good.lit").read_bytes()


def _expect(tmp, blob, pattern):
    path = tmp / "bad.lit"
    path.write_bytes(blob)
    with pytest.raises(litcore.FormatError, match=pattern) as info:
        litcore.Store(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def _set(field, value):
    def edit(f):
        setattr(f, field, value)
    return edit


def _rec(i, **fields):
    def edit(f):
        for k, v in fields.items():
            setattr(f.records[i], k, v)
    return edit


def test_good_file_opens(tmp, good):
    (tmp / "ok.lit").write_bytes(good)
    assert len(litcore.Store(tmp / "ok.lit")) == 3


def test_wrong_magic(tmp, good):
    _expect(tmp, b"GGUF" + good[4:], "not a litcore weight file")


def test_unsupported_version(tmp, good):
    _expect(tmp, litfile.rebuild(good, _set("version", 2)), "unsupported format version 2")


@pytest.mark.parametrize("cut", ["empty", "mid-header", "header-only", "mid-index", "mid-data", "last-byte"])
def test_truncated(tmp, good, cut):
    raw = litfile.parse(good)
    at = {"empty": 0, "mid-header": 60, "header-only": 4096, "mid-index": 4096 + raw.index_size // 2,
          "mid-data": raw.data_offset + 100, "last-byte": len(good) - 1}[cut]
    _expect(tmp, good[:at], "truncated")


def test_trailing_bytes(tmp, good):
    _expect(tmp, good + b"\0" * 4096, "size mismatch")


def test_header_checksum(tmp, good):
    blob = bytearray(good)
    blob[16] ^= 1  # file_size, without fixing the header checksum
    _expect(tmp, bytes(blob), "header checksum")


def test_index_checksum(tmp, good):
    blob = bytearray(good)
    blob[4096 + 6] ^= 0x20  # a byte of the first name
    _expect(tmp, bytes(blob), "index checksum")


def test_index_larger_than_limit(tmp, good):
    f = litfile.parse(good)
    f.index_size = 1 << 40
    _expect(tmp, litfile.build(f, fix_counts=False), "exceeds the limit")


def test_index_past_end_of_file(tmp, good):
    f = litfile.parse(good)
    f.index_size = len(good)
    _expect(tmp, litfile.build(f, fix_counts=False), "past the end")


def test_absurd_tensor_count(tmp, good):
    f = litfile.parse(good)
    f.tensor_count = 2_000_000_000
    _expect(tmp, litfile.build(f, fix_counts=False), "exceeds the limit")


def test_tensor_count_larger_than_index(tmp, good):
    f = litfile.parse(good)
    f.tensor_count = 1000
    _expect(tmp, litfile.build(f, fix_counts=False), "too small")


def test_huge_name_length(tmp, good):
    f = litfile.parse(good)
    idx = bytearray(litfile.index_bytes(f))
    idx[0:4] = struct.pack("<I", 50 << 20)
    _expect(tmp, litfile.build(f, index=bytes(idx)), "name length")


def test_offset_out_of_bounds(tmp, good):
    size = len(good)
    _expect(tmp, litfile.rebuild(good, _rec(0, offset=size)), "tensor 'a.weight'.*past the end")


def test_offset_overflow(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(1, offset=2**64 - 4096)), "tensor 'b.bias'.*past the end")


def test_misaligned_offset(tmp, good):
    f = litfile.parse(good)
    _expect(tmp, litfile.rebuild(good, _rec(1, offset=f.records[1].offset + 8)), "tensor 'b.bias'.*aligned")


def test_overlapping_tensors(tmp, good):
    f = litfile.parse(good)
    _expect(tmp, litfile.rebuild(good, _rec(1, offset=f.records[0].offset)), "tensor 'b.bias'.*overlaps")


def test_nbytes_inconsistent_with_shape(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, nbytes=100)), "tensor 'a.weight'.*does not match")


def test_shape_overflow(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, shape=[2**62, 2**62])), "tensor 'a.weight'.*overflows")


def test_negative_dimension(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, shape=[-1, 4096])), "tensor 'a.weight'.*negative")


def test_unknown_dtype(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, dtype=99)), "tensor 'a.weight'.*unknown dtype code 99")


def test_dtype_changes_nbytes(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, dtype=4)), "tensor 'a.weight'.*does not match float64")


def test_too_many_dimensions(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(2, shape=[1] * 65, nbytes=4)), "rank 65")


def test_duplicate_names(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(1, name=b"a.weight")), "'a.weight'.*twice")


def test_alias_must_precede(tmp, good):
    _expect(tmp, litfile.rebuild(good, _rec(0, alias=2)), "'a.weight'.*does not precede")


def test_alias_must_match_target(tmp, good):
    def edit(f):
        f.records[2].alias = 0
    _expect(tmp, litfile.rebuild(good, edit), "'tied'.*differs")


def test_truncated_metadata(tmp, good):
    f = litfile.parse(good)
    f.metadata_count += 1
    _expect(tmp, litfile.build(f, fix_counts=False), "truncated while reading a metadata")


def test_directory_and_missing_paths_are_os_errors(tmp):
    with pytest.raises(OSError, match="not a regular file"):
        litcore.Store(tmp)
    with pytest.raises(FileNotFoundError, match="missing.lit.*No such file"):
        litcore.Store(tmp / "missing.lit")
