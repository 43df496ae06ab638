"""gptoss::read_bandwidth, bench's bandwidth probe: it reads the whole buffer and rejects what it cannot read."""

from __future__ import annotations

import math

import pytest
import torch


def test_reads_a_buffer_and_reports_a_rate(extension, intra_op_threads):
    buffer = torch.ones(1 << 22, dtype=torch.float32)  # 16 MB
    for threads in (1, 2):
        with intra_op_threads(threads):
            gbps = extension.read_bandwidth(buffer, 2)
        assert math.isfinite(gbps) and gbps > 0


@pytest.mark.parametrize("bad, message", [
    (lambda: (torch.ones(1 << 20)[::2], 1), "contiguous"),
    (lambda: (torch.ones(1 << 20), 0), "repeats must be positive"),
    (lambda: (torch.ones(16), 1), "too small"),
])
def test_rejects_what_it_cannot_read(extension, bad, message):
    buffer, repeats = bad()
    with pytest.raises(RuntimeError, match=message):
        extension.read_bandwidth(buffer, repeats)
