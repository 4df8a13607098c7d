"""The one bit-packing utility: bool bit planes, k-bit codes and 4-bit nibbles, in the layouts
existing checkpoints and ONNX Runtime's MatMulNBits read."""

import math

import pytest
import torch

from slimkit.encoding.bits import pack_bits, pack_codes, pack_nibbles, unpack_bits, unpack_codes, unpack_nibbles


def test_bit_planes_round_trip_and_are_little_endian():
    mask = torch.tensor([True, False, False, False, False, False, False, False, True, True])
    packed = pack_bits(mask)
    assert packed.tolist() == [1, 3] and unpack_bits(packed, 10).tolist() == mask.tolist()
    big = torch.rand(3, 5, 7) > 0.7
    assert torch.equal(unpack_bits(pack_bits(big), big.numel()).reshape(big.shape), big)


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_round_trip_in_bits_per_code(bits):
    codes = torch.randint(2**bits, (1001,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_codes(packed, 1001, bits), codes)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(torch.tensor([2**bits]), bits)


def test_codes_are_consecutive_bits_low_bit_first():
    # 1 = 100, 2 = 010, 3 = 110 (low bit first): bits 100 010 11|0 -> byte 0b11010001, then 0b0
    assert pack_codes(torch.tensor([1, 2, 3]), 3).tolist() == [0b11010001, 0]


@pytest.mark.parametrize("shape", [(7, 5), (4, 16), (1,), (0,)])
def test_nibbles_round_trip_low_nibble_first(shape):
    q = torch.randint(0, 16, shape, dtype=torch.int32)
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.numel() == (q.numel() + 1) // 2
    assert torch.equal(unpack_nibbles(packed)[:q.numel()], q.flatten())


def test_nibble_layout_is_matmulnbits_and_equals_four_bit_codes():
    codes = torch.randint(0, 16, (6, 10), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = pack_nibbles(codes).reshape(6, 5)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)  # low nibble first, row-major
    assert torch.equal(unpack_nibbles(packed), codes)  # rows unpack on their own (embedding gathers)
    assert torch.equal(packed.flatten(), pack_codes(codes, 4))
    assert pack_nibbles(torch.tensor([1, 2, 3])).tolist() == [0x21, 0x03]  # an odd count pads a zero nibble
    with pytest.raises(ValueError, match="4-bit"):
        pack_nibbles(torch.tensor([0, 16]))
