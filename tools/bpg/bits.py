"""Bit I/O: an MSB-first reader and writer with HEVC's exp-Golomb codes (H.265 9.2).

Running off the end of the data is a :class:`BpgError` naming the field, so every parser
built on this reader fails cleanly on truncated input.
"""
from __future__ import annotations

from .errors import BpgError


class BitReader:
    """MSB-first reader with exp-Golomb codes; running off the end is a BpgError."""

    def __init__(self, data: bytes, what: str = "bitstream"):
        self.data = data
        self.pos = 0
        self.what = what

    def u(self, n: int, name: str = "field") -> int:
        if self.pos + n > 8 * len(self.data):
            raise BpgError(f"truncated {self.what}: {name} runs past the end ({len(self.data)} bytes)")
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self, name: str = "field") -> int:
        zeros = 0
        while self.u(1, name) == 0:
            zeros += 1
            if zeros > 31:
                raise BpgError(f"invalid {self.what}: exp-Golomb code of {name} is longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros, name)

    def se(self, name: str = "field") -> int:
        v = self.ue(name)
        return (v + 1) // 2 if v % 2 else -(v // 2)

    def byte_aligned_pos(self) -> int:
        return (self.pos + 7) >> 3


class BitWriter:
    def __init__(self):
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        if not 0 <= value < 1 << n:
            raise ValueError(f"value {value} does not fit in {n} bits")
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def trailing_bits(self) -> None:
        """rbsp_trailing_bits: a one, then zeros to the byte boundary."""
        self.bits.append(1)
        self.zero_pad()

    def zero_pad(self) -> None:
        self.bits.extend([0] * (-len(self.bits) % 8))

    def to_bytes(self) -> bytes:
        self.zero_pad()
        return bytes(int("".join(map(str, self.bits[i:i + 8])), 2) for i in range(0, len(self.bits), 8))
