"""A GGUF file's header read without the ``gguf`` package's reader: its metadata and where its tensor
data ends. The package's ``GGUFReader`` builds a Python object per array element, ~20 s for Gemma's
262,144-token vocabulary; walking the header with ``struct`` takes ~0.1 s, which a command that only
reads a key or two (the prompt format, the template) or checks a file is whole should not wait for.
"""

from __future__ import annotations

import struct
from pathlib import Path


def metadata(path: Path) -> dict:
    """A GGUF file's metadata: strings, numbers, booleans and their arrays, all but long arrays (the
    vocabulary's tokens, scores and merges come back as None). The ``gguf`` package's reader builds
    an object per array element: ~20 s for Gemma's 262,144-token vocabulary; this takes ~0.1 s."""
    return walk(Path(path))[0]


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
"""GGUF's scalar value types as struct codes (8 is a string, 9 an array)."""
_LONG = 1024
"""Arrays longer than this are skipped, not decoded."""


def walk(path: Path) -> tuple[dict, int, int]:
    """(the metadata, where the last tensor's data ends, the file's size): the header, the metadata
    and every tensor's shape and type walked over; struct errors when the file is cut short."""
    import mmap

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:

        def value(kind: int, pos: int, keep: bool):
            if kind == 8:
                (n,) = struct.unpack_from("<Q", mm, pos)
                if pos + 8 + n > len(mm):
                    raise ValueError(f"a string runs past the end of the file at byte {pos}")
                return (mm[pos + 8:pos + 8 + n].decode("utf-8", "replace") if keep else None), pos + 8 + n
            if kind == 9:
                inner, n = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                keep = keep and n <= _LONG
                if inner in _SCALAR and not keep:
                    return None, pos + n * struct.calcsize(_SCALAR[inner])
                items = []
                for _ in range(n):
                    item, pos = value(inner, pos, keep)
                    items.append(item)
                return (items if keep else None), pos
            code = _SCALAR[kind]  # KeyError: not a GGUF value type
            return struct.unpack_from("<" + code, mm, pos)[0], pos + struct.calcsize(code)

        n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
        pos, meta = 24, {}
        for _ in range(n_kv):
            key, pos = value(8, pos, True)
            (kind,) = struct.unpack_from("<I", mm, pos)
            meta[key], pos = value(kind, pos + 4, True)
        ends = []
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", mm, pos)
            (dims,) = struct.unpack_from("<I", mm, pos + 8 + n)
            shape = struct.unpack_from(f"<{dims}Q", mm, pos + 12 + n)
            kind, offset = struct.unpack_from("<IQ", mm, pos + 12 + n + 8 * dims)
            pos += 24 + n + 8 * dims
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            count = 1
            for d in shape:
                count *= d
            ends.append(offset + count // block * nbytes)
        alignment = meta.get("general.alignment", 32)
        return meta, -(-pos // alignment) * alignment + max(ends, default=0), len(mm)
