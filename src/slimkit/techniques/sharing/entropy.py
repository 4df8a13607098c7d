"""Entropy coding, Deep Compression's third stage: canonical Huffman codes of a shared layer's
cluster codes and, for a pruned layer, of the gaps between its nonzero weights (Han et al. 2016
store relative positions the same way), so frequent symbols cost fewer bits than log2(k).

The result is a real file (``write_archive``): a safetensors container holding, per shared
layer, its code table (symbols and code lengths), the Huffman bit stream and the codebook, plus
every other tensor of the state dict as is; ``read_archive`` decodes it back to the exact state
dict (tested bit-exact). Huffman coding is written here (a heap and a canonical code table);
Python has no Huffman coder in its standard library and the container is safetensors, so
nothing is ever unpickled.
"""

from __future__ import annotations

import heapq
import math
import os
from collections import Counter
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from slimkit.core.errors import CheckpointError


def code_lengths(symbols: np.ndarray) -> dict[int, int]:
    """Huffman code length of each distinct symbol (a lone symbol gets 1 bit)."""
    counts = Counter(symbols.tolist())
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(count, i, [symbol]) for i, (symbol, count) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """{symbol: (code, length)} of the canonical Huffman code for ``lengths``: symbols ordered by
    (length, symbol), each code the previous plus one, shifted left when the length grows."""
    codes, code, previous = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = (code, length)
        code += 1
        previous = length
    return codes


def huffman_encode(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(distinct symbols int64, their code lengths uint8, the packed bit stream, MSB first)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), b""
    lengths = code_lengths(symbols)
    table = canonical_codes(lengths)
    alphabet = np.array(sorted(table), dtype=np.int64)
    index = np.searchsorted(alphabet, symbols)
    code_of = np.array([table[s][0] for s in alphabet], dtype=np.int64)
    length_of = np.array([table[s][1] for s in alphabet], dtype=np.int64)
    lens = length_of[index]
    total = int(lens.sum())
    # bit b of symbol i's code (MSB first) lands at position start_i + b
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    bits = np.zeros(total, dtype=np.uint8)
    for b in range(int(length_of.max())):
        has = lens > b
        shift = lens[has] - 1 - b
        bits[starts[has] + b] = (code_of[index[has]] >> shift) & 1
    return alphabet, np.array([table[s][1] for s in alphabet], dtype=np.uint8), np.packbits(bits).tobytes()


def huffman_decode(alphabet: np.ndarray, lengths: np.ndarray, stream: bytes, count: int) -> np.ndarray:
    """The ``count`` symbols of ``stream`` (canonical decoding, one code length at a time)."""
    if count == 0:
        return np.zeros(0, np.int64)
    table = canonical_codes(dict(zip(alphabet.tolist(), lengths.tolist())))
    by_code = {(code, length): symbol for symbol, (code, length) in table.items()}
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8)).tolist()
    out = np.empty(count, dtype=np.int64)
    code = length = position = 0
    for i in range(count):
        while True:
            if position >= len(bits):
                raise CheckpointError("entropy-coded stream ends early")
            code = (code << 1) | bits[position]
            position += 1
            length += 1
            symbol = by_code.get((code, length))
            if symbol is not None:
                out[i] = symbol
                code = length = 0
                break
            if length > 64:
                raise CheckpointError("entropy-coded stream holds an invalid code")
    return out


def encode_layer(codes: np.ndarray, fixed_zero: bool) -> dict[str, np.ndarray]:
    """A shared layer's cluster codes as Huffman streams: all codes, or for a pruned layer (code 0
    is the exact zero) the gaps between nonzeros and the nonzeros' codes."""
    codes = np.asarray(codes, dtype=np.int64).ravel()
    parts = {"count": np.array([codes.size], dtype=np.int64)}
    if fixed_zero:
        positions = np.flatnonzero(codes)
        gaps = np.diff(np.concatenate([[-1], positions])) - 1
        streams = {"gaps": gaps, "codes": codes[positions]}
        parts["nonzeros"] = np.array([positions.size], dtype=np.int64)
    else:
        streams = {"codes": codes}
    for key, symbols in streams.items():
        alphabet, lengths, stream = huffman_encode(symbols)
        parts[f"{key}_symbols"] = alphabet
        parts[f"{key}_lengths"] = lengths
        parts[f"{key}_stream"] = np.frombuffer(stream, dtype=np.uint8).copy()
    return parts


def decode_layer(parts: Mapping[str, np.ndarray], expected: int | None = None) -> np.ndarray:
    """The codes ``encode_layer`` coded; a malformed or hostile entry (missing parts, counts that
    disagree with ``expected``, negative gaps, positions outside the layer, codes that do not
    parse) is a CheckpointError, checked before anything large is allocated."""
    try:
        count = int(parts["count"][0])
        nonzeros = int(parts["nonzeros"][0]) if "nonzeros" in parts else None

        def stream(key: str, n: int) -> np.ndarray:
            return huffman_decode(parts[f"{key}_symbols"], parts[f"{key}_lengths"], parts[f"{key}_stream"].tobytes(),
                                  n)

        if expected is not None and count != expected:
            raise CheckpointError(f"entropy-coded layer holds {count} codes, expected {expected}")
        if count < 0 or (nonzeros is not None and not 0 <= nonzeros <= count):
            raise CheckpointError(f"entropy-coded layer has inconsistent counts ({count} codes, {nonzeros} nonzero)")
        if nonzeros is None:
            return stream("codes", count)
        gaps = stream("gaps", nonzeros)
        if gaps.size and int(gaps.min()) < 0:
            raise CheckpointError("entropy-coded gaps between nonzeros are negative")
        positions = np.cumsum(gaps + 1) - 1
        if positions.size and positions[-1] >= count:
            raise CheckpointError("entropy-coded positions fall outside the layer")
        codes = np.zeros(count, dtype=np.int64)
        codes[positions] = stream("codes", nonzeros)
        return codes
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise CheckpointError(f"entropy-coded layer is malformed ({err!r})") from None


def write_archive(path: str | os.PathLike[str], model: torch.nn.Module) -> dict[str, int]:
    """The model's state dict with every shared layer's packed codes replaced by Huffman streams,
    written atomically as safetensors; returns {"bytes": file size, "coded_layers": n}."""
    from slimkit.core.io import save_state_dict
    from slimkit.techniques.sharing.codebook import _SharedWeight

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    coded = 0
    for name, module in model.named_modules():
        if not isinstance(module, _SharedWeight):
            continue
        prefix = f"{name}." if name else ""
        del state[prefix + "weight_codes"]
        codes = module.codes().cpu().numpy()
        for key, value in encode_layer(codes, module.fixed_zero).items():
            state[f"{prefix}weight_huffman.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        coded += 1
    out = save_state_dict(path, state, metadata={"format": "slimkit-huffman-1"})
    return {"bytes": Path(out).stat().st_size, "coded_layers": coded}


def read_archive(path: str | os.PathLike[str], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The exact state dict ``write_archive`` wrote for ``model`` (a model of the same skeleton:
    its shared layers say how many bits each code takes)."""
    from slimkit.core.io import load_state_dict
    from slimkit.encoding.bits import pack_codes
    from slimkit.techniques.sharing.codebook import _SharedWeight

    state = load_state_dict(path)
    for name, module in model.named_modules():
        if not isinstance(module, _SharedWeight):
            continue
        prefix = f"{name}." if name else ""
        key = prefix + "weight_huffman."
        parts = {k[len(key):]: state.pop(k).numpy() for k in [k for k in state if k.startswith(key)]}
        if not parts:
            raise CheckpointError(f"{path}: no entropy-coded codes for shared layer {name!r}")
        try:
            codes = decode_layer(parts, expected=math.prod(module.weight_shape))
            packed = pack_codes(torch.from_numpy(codes), module.bits)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: layer {name!r}: {err}") from None
        except ValueError as err:  # codes beyond the layer's bits
            raise CheckpointError(f"{path}: layer {name!r}: {err}") from None
        state[prefix + "weight_codes"] = packed
    return state
