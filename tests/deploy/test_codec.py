import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from roboflamingo.deploy.codec import CodecError, packb, unpackb

DTYPES = st.sampled_from(
    [np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)))
def test_arrays_round_trip_with_dtype_and_shape(arr):
    out = unpackb(packb({"x": arr, "nested": [arr, {"y": arr}]}))
    for got in (out["x"], out["nested"][0], out["nested"][1]["y"]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
    out["x"][...] = 0 if arr.dtype != np.bool_ else False  # decoded arrays are writable copies


def test_numpy_scalars_and_non_contiguous_arrays_encode():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    out = unpackb(packb({"a": arr, "s": np.float32(1.5), "i": np.int64(3)}))
    np.testing.assert_array_equal(out["a"], arr)
    assert out["s"] == 1.5 and out["i"] == 3


def test_object_arrays_are_refused_on_both_sides():
    with pytest.raises(TypeError, match="dtype object"):
        packb(np.array([{"a": 1}], dtype=object))
    crafted = msgpack.packb({"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\x00" * 8})
    with pytest.raises(CodecError, match="not allowed"):
        unpackb(crafted)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"dtype": "<f4", "shape": [2], "data": b"\x00" * 7}, "needs 8 bytes"),
        ({"dtype": "<f4", "shape": [-1], "data": b""}, "non-negative"),
        ({"dtype": "[('a', '<i4')]", "shape": [1], "data": b"\x00" * 4}, "unknown dtype|not allowed"),
        ({"dtype": "V4", "shape": [1], "data": b"\x00" * 4}, "not allowed"),
        ({"dtype": "nope", "shape": [1], "data": b"\x00"}, "unknown dtype"),
        ({"dtype": "<f4", "shape": "2", "data": b"\x00" * 8}, "needs 'dtype'"),
    ],
)
def test_malformed_array_payloads_raise_codec_errors(fields, match):
    with pytest.raises(CodecError, match=match):
        unpackb(msgpack.packb({"__ndarray__": True, **fields}))


@pytest.mark.parametrize("frame", [b"\xc1", b"\x92\x01", b"\x81\x01\x02", "a text frame"])
def test_corrupt_frames_raise_codec_errors(frame):
    with pytest.raises(CodecError):
        unpackb(frame)
