"""Malformed BPG input ends in a clean BpgError (or a valid image), quickly, never a crash."""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import shared_path
import tools.bpg as bpg
from tools.bpg import BpgError

pytestmark = pytest.mark.shared

CASES = 300
PER_CASE_S = 2.0  # generous: a 224² decode takes ~10 ms


def _mutants(seed=20240601):
    root = shared_path("bpg-vectors")
    files = sorted(root.glob("*.bpg"))
    rng = np.random.default_rng(seed)
    for i in range(CASES):
        data = bytearray(files[rng.integers(len(files))].read_bytes())
        kind = i % 3
        if kind == 0:      # truncation anywhere, header included
            data = data[:rng.integers(0, len(data))]
        elif kind == 1:    # bit flips, half of them in the first 24 bytes (header + PPS)
            for _ in range(rng.integers(1, 8)):
                pos = rng.integers(0, min(24, len(data))) if rng.random() < 0.5 else rng.integers(len(data))
                data[pos] ^= 1 << rng.integers(8)
        else:              # random byte runs overwritten
            pos = rng.integers(0, len(data))
            n = int(rng.integers(1, 16))
            data[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        yield i, bytes(data)


def test_fuzzed_vectors_fail_cleanly():
    outcomes = {"image": 0, "error": 0}
    slowest = 0.0
    for i, data in _mutants():
        t0 = time.perf_counter()
        try:
            out = bpg.decode(data)
        except BpgError:
            outcomes["error"] += 1
        else:
            # a valid header with a damaged slice may decode with concealment: fine, if the
            # image has the size the header promises
            h = bpg.read_header(data)
            assert out.shape == (h.picture_height, h.picture_width, 3) and out.dtype == np.uint8, i
            outcomes["image"] += 1
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, elapsed)
        assert elapsed < PER_CASE_S, (i, elapsed)
    assert outcomes["error"] > CASES // 10, outcomes  # the fuzzer really produces bad input
    print(f"fuzz: {outcomes}, slowest case {slowest * 1000:.0f} ms")


@pytest.mark.parametrize("data", [b"", b"BPG", b"BPG\xfb", b"BPG\xfb\x20\x00\x81\x60\x81\x60\x00",
                                  b"BPG\xfb\x20\x00\x81\x60\x81\x60\x00\x03\x92\x42\x50",
                                  b"\x00" * 100, bytes(range(256))])
def test_degenerate_inputs(data):
    with pytest.raises(BpgError):
        bpg.decode(data)


# -- truncation is an error, not a picture ----------------------------

def test_genuine_file_truncated_to_160_bytes_is_an_error():
    data = (shared_path("bpg-vectors") / "astronaut_q41_420_m9.bpg").read_bytes()
    assert len(bpg.decode(data)) == 224
    with pytest.raises(BpgError, match="truncated|undecodable"):
        bpg.decode(data[:160])


def test_every_genuine_vector_is_complete():
    """The truncation check never fires on complete files (all 29 genuine vectors)."""
    for path in sorted(shared_path("bpg-vectors").glob("*.bpg")):
        bpg.decode(path.read_bytes())


@pytest.mark.parametrize("chroma", ["420", "444", "gray"])
def test_truncated_files_are_errors_anywhere_in_the_slice(chroma):
    """Cut a file made here at every byte of its last 48 and at a spread of points before:
    each cut is refused, unless it removed only bits the decoder never needed (the stop bit
    and the arithmetic coder's last flushed bits), in which case the picture is exactly the
    full file's."""
    from tests.conftest import synthetic_rgb
    data = bpg.encode(synthetic_rgb(96, 128, seed=5), q=30, effort=3, chroma=chroma)
    full = bpg.decode(data)
    start = bpg.read_header(data).data_offset
    cuts = sorted(set(range(max(start, len(data) - 48), len(data))) | set(range(start, len(data), 37)))
    refused = 0
    for n in cuts:
        try:
            out = bpg.decode(data[:n])
        except BpgError:
            refused += 1
            continue
        assert n >= len(data) - 2 and np.array_equal(out, full), (n, len(data))
    assert refused >= len(cuts) - 2
