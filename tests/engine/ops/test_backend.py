"""engine.ops exposes every op of OP_NAMES and switches backends by name."""

from __future__ import annotations

import pytest

from engine import ops
from engine.ops import reference


def test_every_op_is_exposed():
    assert ops.OP_NAMES and len(set(ops.OP_NAMES)) == len(ops.OP_NAMES)
    for name in ops.OP_NAMES:
        assert callable(getattr(reference, name)), name
        assert callable(getattr(ops, name)), name


def test_reference_backend_routes_every_op_to_the_reference_module():
    previous = ops.active_backend()
    assert "reference" in ops.available_backends()
    try:
        ops.use_backend("reference")
        assert ops.active_backend() == "reference"
        for name in ops.OP_NAMES:
            assert getattr(ops, name) is getattr(reference, name), name
    finally:
        ops.use_backend(previous)


def test_unknown_backend_is_rejected_by_name():
    previous = ops.active_backend()
    routed = {name: getattr(ops, name) for name in ops.OP_NAMES}
    with pytest.raises(ValueError, match="'nope'"):
        ops.use_backend("nope")
    assert ops.active_backend() == previous  # nothing was switched
    assert all(getattr(ops, name) is fn for name, fn in routed.items())
