"""C++ sdpa_sinks_varlen: several sequences of different lengths (decode tokens and prefill chunks),
each against its own cache (full-attention slices read in place, sliding rings in slot order), in one
call: each sequence's rows equal the C++ sdpa_sinks of that sequence alone bit for bit, and lie within
the float64 bound of the spec; the reference twin agrees; opcheck; errors name the entry."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops import reference

from tests.engine.ops.test_extension_sdpa_sinks import check, make_case


def sequences(lengths, G, K, Dh, window, kv_dtype, seed):
    """Per sequence (q [T, H, Dh], k/v [K, S, Dh] slices of a longer cache buffer, q_pos, k_pos): a
    sliding-window layer's ring plus new keys when `window`, else a growing cache read in place."""
    out = []
    for i, T in enumerate(lengths):
        ring = 3 + 11 * i  # histories of different lengths
        q, k, v, sinks, q_pos, k_pos = make_case(1, T, G, K, Dh, ring=ring, empty=2 if window else 0,
                                                 seed=seed + i, kv_dtype=kv_dtype)
        S = k.shape[2]
        buffer_k = torch.zeros(K, S + 9, Dh, dtype=kv_dtype)  # a cache with spare slots past S
        buffer_v = torch.zeros_like(buffer_k)
        buffer_k[:, :S], buffer_v[:, :S] = k[0], v[0]
        out.append((q[0], buffer_k[:, :S], buffer_v[:, :S], q_pos, k_pos))
    return out, sinks


def run_varlen(op, seqs, sinks, scale, window):
    q = torch.cat([s[0] for s in seqs]) if seqs else torch.empty(0, sinks.shape[0], 8)
    return op(q, [s[1] for s in seqs], [s[2] for s in seqs], sinks, scale, window,
              torch.cat([s[3] for s in seqs]) if seqs else torch.empty(0, dtype=torch.long),
              [s[4] for s in seqs], [s[0].shape[0] for s in seqs])


@pytest.mark.parametrize("lengths", [[1, 1, 1, 1], [1, 5, 1, 37], [0, 3, 1], [70]])
@pytest.mark.parametrize("window", [0, 7])
@pytest.mark.parametrize("G, Dh, kv_dtype", [(3, 24, torch.float32), (8, 64, torch.bfloat16)])
def test_each_sequence_as_alone(extension, lengths, window, G, Dh, kv_dtype):
    seed = sum(lengths) * 31 + window + G
    seqs, sinks = sequences(lengths, G, 2, Dh, window, kv_dtype, seed)
    scale = 1 / math.sqrt(Dh)
    got = run_varlen(extension.sdpa_sinks_varlen, seqs, sinks, scale, window)
    assert got.dtype == torch.float32 and got.shape == (sum(lengths), G * 2, Dh)
    start = 0
    for q, k, v, q_pos, k_pos in seqs:
        T = q.shape[0]
        alone = extension.sdpa_sinks(q[None], k[None], v[None], sinks, scale, window, q_pos, k_pos)[0]
        assert torch.equal(got[start:start + T], alone)  # the same tasks, computed the same way
        check(extension, q[None], k[None], v[None], sinks, scale, window, q_pos, k_pos)  # within the spec's bound
        start += T
    want = run_varlen(reference.sdpa_sinks_varlen, seqs, sinks, scale, window)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_two_threads(extension, intra_op_threads):
    seqs, sinks = sequences([1, 9, 1, 130, 1], 8, 2, 64, 128, torch.bfloat16, seed=4)
    one = run_varlen(extension.sdpa_sinks_varlen, seqs, sinks, 0.125, 128)
    with intra_op_threads(2):
        two = run_varlen(extension.sdpa_sinks_varlen, seqs, sinks, 0.125, 128)
    assert torch.equal(one, two)


def test_no_sequences(extension):
    got = extension.sdpa_sinks_varlen(torch.empty(0, 4, 8), [], [], torch.zeros(4), 1.0, 0,
                                      torch.empty(0, dtype=torch.long), [], [])
    assert got.shape == (0, 4, 8) and got.dtype == torch.float32


def test_reference_twin_is_sdpa_sinks_per_sequence():
    seqs, sinks = sequences([2, 1, 6], 3, 2, 24, 5, torch.float32, seed=8)
    got = run_varlen(reference.sdpa_sinks_varlen, seqs, sinks, 0.2, 5)
    want = torch.cat([reference.sdpa_sinks(q[None], k[None], v[None], sinks, 0.2, 5, qp, kp)[0]
                      for q, k, v, qp, kp in seqs])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="q_lengths sum to 8 but q has 9 tokens"):
        reference.sdpa_sinks_varlen(torch.zeros(9, 6, 24), [s[1] for s in seqs], [s[2] for s in seqs], sinks, 0.2,
                                    5, torch.zeros(9, dtype=torch.long), [s[4] for s in seqs], [2, 1, 5])


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_opcheck(extension, kv_dtype):
    seqs, sinks = sequences([1, 4, 1], 2, 2, 24, 5, kv_dtype, seed=6)
    q = torch.cat([s[0] for s in seqs])
    args = (q, [s[1] for s in seqs], [s[2] for s in seqs], sinks, 0.2, 5, torch.cat([s[3] for s in seqs]),
            [s[4] for s in seqs], [1, 4, 1])
    torch.library.opcheck(torch.ops.gptoss.sdpa_sinks_varlen.default, args)


def test_bad_input_names_the_entry(extension):
    H, K, Dh = 4, 2, 8
    q, sinks, q_pos = torch.randn(3, H, Dh), torch.zeros(H), torch.arange(3)
    k = [torch.randn(K, 5, Dh), torch.randn(K, 2, Dh)]
    v = [x.clone() for x in k]
    k_pos = [torch.arange(5), torch.arange(2)]
    run = extension.sdpa_sinks_varlen
    with pytest.raises(RuntimeError, match="q_lengths sum to 4 but q has 3 tokens"):
        run(q, k, v, sinks, 1.0, 0, q_pos, k_pos, [2, 2])
    with pytest.raises(RuntimeError, match=r"k, v and k_pos must have one entry per sequence \(3 q_lengths\)"):
        run(q, k, v, sinks, 1.0, 0, q_pos, k_pos, [1, 1, 1])
    with pytest.raises(RuntimeError, match=r"k_pos\[1\] must have 2 entries"):
        run(q, k, v, sinks, 1.0, 0, q_pos, [k_pos[0], torch.arange(3)], [2, 1])
    with pytest.raises(RuntimeError, match=r"v\[0\] must have k\[0\]'s shape"):
        run(q, k, [v[0][:, :4], v[1]], sinks, 1.0, 0, q_pos, k_pos, [2, 1])
    with pytest.raises(RuntimeError, match=r"k\[1\] has 1 kv heads but k\[0\] has 2"):
        run(q, [k[0], k[1][:1]], [v[0], v[1][:1]], sinks, 1.0, 0, q_pos, k_pos, [2, 1])
    with pytest.raises(RuntimeError, match=r"k\[1\] must be \[K, S, Dh\]"):
        run(q, [k[0], k[1][None]], v, sinks, 1.0, 0, q_pos, k_pos, [2, 1])
    with pytest.raises(RuntimeError, match="every k .and every v. must have one dtype"):
        run(q, [k[0], k[1].bfloat16()], v, sinks, 1.0, 0, q_pos, k_pos, [2, 1])
    with pytest.raises(RuntimeError, match="sinks has 3 entries but q has 4 heads"):
        run(q, k, v, torch.zeros(3), 1.0, 0, q_pos, k_pos, [2, 1])
