"""Bit packing: round trips, the documented bit order (golden bytes) and errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quant import PackingError, UnsupportedBitsError, pack, packed_size, unpack


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    rows=st.integers(1, 5),
    cols=st.integers(1, 67),
    seed=st.integers(0, 2**31 - 1),
)
def test_unpack_inverts_pack(bits: int, rows: int, cols: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 1 << bits, (rows, cols), generator=gen, dtype=torch.uint8)
    packed = pack(values, bits)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == (rows, packed_size(cols, bits))
    assert torch.equal(unpack(packed, bits, cols), values)


def test_int4_bit_order_golden_bytes() -> None:
    # element 2i in the low nibble, 2i+1 in the high nibble; odd tail padded with a zero code
    codes = torch.tensor([[0x1, 0xF, 0x7, 0x0, 0xA]], dtype=torch.uint8)
    assert pack(codes, 4).tolist() == [[0xF1, 0x07, 0x0A]]


def test_int2_bit_order_golden_bytes() -> None:
    # element 4i+j in bits 2j..2j+1
    codes = torch.tensor([[1, 2, 3, 0, 3, 1]], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [[0b00_11_10_01, 0b0000_01_11]]


def test_int8_pack_is_identity_and_unpack_a_view() -> None:
    codes = torch.arange(10, dtype=torch.uint8).view(2, 5)
    packed = pack(codes, 8)
    assert packed.data_ptr() == codes.data_ptr()
    assert unpack(packed, 8, 5).data_ptr() == codes.data_ptr()


def test_rows_are_packed_independently() -> None:
    codes = torch.tensor([[1, 2, 3], [3, 2, 1]], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [[1 | 2 << 2 | 3 << 4], [3 | 2 << 2 | 1 << 4]]


def test_code_out_of_range_is_refused() -> None:
    with pytest.raises(PackingError) as info:
        pack(torch.tensor([0, 16], dtype=torch.uint8), 4)
    assert str(info.value) == "pack: found code 16 which does not fit in 4 bits; codes must lie in [0, 15]"


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(PackingError) as info:
        pack(torch.tensor([1, 2], dtype=torch.int32), 2)
    assert str(info.value) == ("pack: values must be torch.uint8 codes, got torch.int32; convert with .to(torch.uint8)")


def test_unsupported_bits() -> None:
    with pytest.raises(UnsupportedBitsError) as info:
        pack(torch.zeros(4, dtype=torch.uint8), 3)
    assert str(info.value) == "pack: bits=3 is not supported; use one of 2, 4 or 8"
    assert isinstance(info.value, ValueError)


def test_unpack_too_short_buffer() -> None:
    with pytest.raises(PackingError) as info:
        unpack(torch.zeros(2, 3, dtype=torch.uint8), 2, 13)
    assert str(info.value) == (
        "unpack: 13 codes of 2 bits need 4 bytes per row but the packed rows hold 3; check the packed_shape "
        "recorded with the tensor"
    )
