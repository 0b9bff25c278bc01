"""benchmarks/profile_memory.py: the sampler sees a rise in resident memory and where it happened."""

import time

from benchmarks.profile_memory import Sampler, highs
from r1lite.meter.memory import release_free


def hold_memory(mib: int) -> bytearray:
    block = bytearray(mib * 2**20)  # zero-filled: every page touched, resident
    time.sleep(0.2)
    return block


def test_the_sampler_keeps_each_windows_highest_point_and_its_stack(monkeypatch):
    monkeypatch.setattr("benchmarks.profile_memory.KEEP", ("test_profile_memory",))
    # free heap memory that earlier tests left resident goes back first: the block would otherwise
    # land in a resident hole of the heap and the resident set not rise (seen once in a full run)
    release_free()
    sampler = Sampler(0.002, 60.0)
    sampler.start()
    time.sleep(0.05)
    block = hold_memory(200)
    sampler.done.set()
    sampler.join()
    first, top = sampler.samples[0], highs(sampler.samples, 60.0)[-1]
    assert top[1] - first[1] > 150 and any(":hold_memory" in frame for frame in top[2])
    del block
    assert highs([(0.1, 5.0, []), (0.5, 7.0, ["a"]), (1.2, 6.0, ["b"])], 1.0) == [(0.5, 7.0, ["a"]), (1.2, 6.0, ["b"])]
