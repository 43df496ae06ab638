"""RoPE with YaRN: engine.model.RotaryEmbedding's frequency/cos-sin table and reference.rope_, against
a float64 evaluation of the gpt-oss YaRN formulas and a per-pair rotation loop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.config import YarnScaling, yarn_correction_range
from engine.model import RotaryEmbedding
from engine.ops import reference
from engine.presets import preset_config

from tests.engine.ops.naive import EPS32, U32

CPU = torch.device("cpu")
REAL = preset_config("20b-shape")

# ω_i for the real config, as published to 6 significant digits.
PUBLISHED_OMEGA = {
    0: 1.0, 1: 0.689044, 2: 0.474782, 3: 0.327146, 4: 0.225418, 5: 0.155323, 6: 0.107024,
    7: 0.0737446, 8: 0.0508133, 9: 0.0317057, 10: 0.0193350, 11: 0.0115920, 12: 0.00679496,
    13: 0.00386036, 14: 0.00209379, 15: 0.00105260, 16: 0.000456484, 17: 0.000129319,
    18: 3.83088e-05, 19: 2.63965e-05, 20: 1.81883e-05, 24: 4.09998e-06, 28: 9.24209e-07,
    31: 3.02351e-07,
}


def with_head_dim(config, d):
    return dataclasses.replace(config, head_dim=d)


def with_factor(config, factor):
    return dataclasses.replace(config, rope_scaling=dataclasses.replace(config.rope_scaling, factor=factor))


CONFIGS = {
    "20b": REAL,
    "d22": with_head_dim(REAL, 22),  # d/2 = 11 is odd; the ramp spans dims 2.8..6.0
    "d40": with_head_dim(REAL, 40),
    "d24-theta1e4-s4": dataclasses.replace(
        REAL, head_dim=24, rope_theta=10000.0,
        rope_scaling=YarnScaling(factor=4.0, beta_fast=32.0, beta_slow=1.0, original_max_position_embeddings=512)),
    "factor1": with_factor(REAL, 1.0),  # no YaRN: plain RoPE, c = 1
    "factor1-d22": with_factor(with_head_dim(REAL, 22), 1.0),
}


def spec_yarn(config) -> tuple[torch.Tensor, float, float, float]:
    """float64 ω [d/2], c, low, high straight from the specification."""
    d, theta, yarn = config.head_dim, config.rope_theta, config.rope_scaling
    s, L0 = yarn.factor, yarn.original_max_position_embeddings

    def dim(beta):
        return d * math.log(L0 / (beta * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim(yarn.beta_fast), dim(yarn.beta_slow)
    omega = []
    for i in range(d // 2):
        f = theta ** (2 * i / d)
        r = min(max((i - low) / (high - low), 0.0), 1.0)
        omega.append(1 / (s * f) * r + 1 / f * (1 - r))
    return torch.tensor(omega, dtype=torch.float64), 0.1 * math.log(s) + 1, low, high


def omega_bound(config) -> torch.Tensor:
    """Absolute error bound [d/2] of a float32 evaluation of ω (the engine's), derived term by term."""
    d, theta, s = config.head_dim, config.rope_theta, config.rope_scaling.factor
    omega, _, low, high = spec_yarn(config)
    i = torch.arange(d // 2, dtype=torch.float64)
    x = 2 * i / d
    ext, inter = theta ** -x, theta ** -x / s
    # θ^x: the exponent 2i/d rounded (relative ln θ·x·u) plus 1 ulp (2u) of pow; then 1/f, s·f and
    # the blend's two products and sum add one rounding each.
    rounding = omega * (math.log(theta) * x + 6) * U32
    # The ramp r is computed in float32 from a rounded low: |Δr| ≤ u·(|low| + |i − low|)/(high − low)
    # plus one rounding each for the division, 1 − r, 1 − (1 − r) and the range; it moves ω by
    # |ω_ext − ω_int|·|Δr|. Clamped dims (r exactly 0 or 1) carry no ramp error.
    ramp = (i - low) / (high - low)
    inside = (ramp > 0) & (ramp < 1)
    ramp_error = torch.where(inside, U32 * ((abs(low) + (i - low).abs()) / (high - low) + 4), 0.0)
    return rounding + (ext - inter).abs() * ramp_error


def test_correction_range_and_attention_factor_of_real_config():
    low, high = yarn_correction_range(REAL)
    assert low == pytest.approx(8.092779115512402, rel=1e-14)  # float64 evaluation of the same formula
    assert high == pytest.approx(17.39802450158856, rel=1e-14)
    _, c, spec_low, spec_high = spec_yarn(REAL)
    assert (low, high) == pytest.approx((spec_low, spec_high), rel=1e-14)
    assert c == pytest.approx(1.3465735902799727, rel=1e-14)
    assert RotaryEmbedding(REAL, CPU).attention_factor == pytest.approx(c, rel=1e-14)


def test_truncated_correction_range_is_rounded_outwards():
    truncated = dataclasses.replace(REAL, rope_scaling=dataclasses.replace(REAL.rope_scaling, truncate=True))
    assert yarn_correction_range(truncated) == (8, 18)


def test_inv_freq_reproduces_published_table():
    omega = RotaryEmbedding(REAL, CPU).inv_freq
    assert omega.dtype == torch.float32 and omega.shape == (32,)
    spec, *_ = spec_yarn(REAL)
    for i, published in PUBLISHED_OMEGA.items():
        # Published to 6 significant digits: half a unit in the 6th digit, plus one float32 ulp.
        tol = 0.5 * 10 ** (math.floor(math.log10(published)) - 5) + EPS32 * published
        assert abs(omega[i].item() - published) <= tol, i
        assert abs(spec[i].item() - published) <= tol, i  # and the float64 spec used below agrees


@pytest.mark.parametrize("name", CONFIGS)
def test_inv_freq_and_attention_factor_match_spec(name):
    config = CONFIGS[name]
    rope = RotaryEmbedding(config, CPU)
    omega, c, _, _ = spec_yarn(config)
    assert rope.inv_freq.dtype == torch.float32 and rope.inv_freq.shape == (config.head_dim // 2,)
    assert ((rope.inv_freq.double() - omega).abs() <= omega_bound(config)).all()
    assert rope.attention_factor == pytest.approx(c, rel=1e-14)
    if config.rope_scaling.factor == 1:
        assert rope.attention_factor == 1.0


def cos_sin_bound(config, positions: torch.Tensor) -> torch.Tensor:
    """Absolute error bound [P, d/2] of the float32 table entries c·cos(p·ω), c·sin(p·ω)."""
    omega, c, _, _ = spec_yarn(config)
    p = positions.double()[:, None]
    # Phase: p·Δω from ω, plus the rounding of the float32 product p·ω (u·p·ω); cos/sin within 1 ulp
    # (2u absolute at most); then the product with c (itself rounded to float32): 2u·c.
    return c * (p * omega_bound(config) + p * omega * U32 + 2 * U32) + 2 * U32 * c


@pytest.mark.parametrize("name", CONFIGS)
def test_cos_sin_table_matches_spec(name):
    config = CONFIGS[name]
    rope = RotaryEmbedding(config, CPU)
    table = rope.cos_sin(5000)
    half = config.head_dim // 2
    assert table.dtype == torch.float32 and table.shape[0] >= 5000 and table.shape[1] == config.head_dim
    positions = torch.tensor([0, 1, 2, 3, 17, 127, 128, 4095, 4096, 4999])
    omega, c, _, _ = spec_yarn(config)
    phase = positions.double()[:, None] * omega
    bound = cos_sin_bound(config, positions)
    assert ((table[positions, :half].double() - c * phase.cos()).abs() <= bound).all()
    assert ((table[positions, half:].double() - c * phase.sin()).abs() <= bound).all()
    assert torch.equal(rope.cos_sin(7)[:5000], table[:5000])  # asking for fewer rows keeps the table


def naive_rope(x: torch.Tensor, table: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 half-split rotation of x [..., T, heads, d], one (token, pair) at a time.

    Returns the rotated x and the error bound of a float32 evaluation: each output a·C − b·S (or
    b·C + a·S) has two rounded products and one rounded sum, so |err| ≤ 2u·(|a·C| + |b·S|)·(1 + u)
    (resp. |b·C| + |a·S|).
    """
    x, table = x.double(), table.double()
    d = x.shape[-1]
    half = d // 2
    out, bound = torch.empty_like(x), torch.empty_like(x)
    for t, p in enumerate(positions.tolist()):
        for i in range(half):
            a, b = x[..., t, :, i], x[..., t, :, half + i]
            C, S = table[p, i], table[p, half + i]
            out[..., t, :, i] = a * C - b * S
            out[..., t, :, half + i] = b * C + a * S
            bound[..., t, :, i] = 2 * U32 * ((a * C).abs() + (b * S).abs()) * (1 + U32)
            bound[..., t, :, half + i] = 2 * U32 * ((b * C).abs() + (a * S).abs()) * (1 + U32)
    return out, bound


POSITIONS = {
    "from0": [0, 1, 2, 3, 4],
    "offset": [4090, 4091, 4092, 4093, 4094, 4095, 4096],  # not starting at 0, across L0
    "scattered": [5, 3, 100, 4097, 9, 10, 11],  # neither contiguous nor sorted
}


@pytest.mark.parametrize("lead", [(), (2,)])
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("d", [22, 64])
def test_rotation_matches_naive_on_random_table(d, positions, lead):
    # Any float32 table is a valid cos_sin input: this pins the pairing and signs, nothing else.
    g = torch.Generator().manual_seed(d + len(lead))
    pos = torch.tensor(POSITIONS[positions])
    T, H, K = len(pos), 6, 2
    table = torch.randn(int(pos.max()) + 3, d, generator=g)
    q = torch.randn(*lead, T, H, d, generator=g)
    k = torch.randn(*lead, T, K, d, generator=g)
    want_q, bound_q = naive_rope(q, table, pos)
    want_k, bound_k = naive_rope(k, table, pos)
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    assert reference.rope_(q, k, table, pos) is None
    assert q.data_ptr() == q_ptr and k.data_ptr() == k_ptr  # rotated in place
    assert ((q.double() - want_q).abs() <= bound_q).all()
    assert ((k.double() - want_k).abs() <= bound_k).all()


def spec_rotation(config, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x rotated by the float64 spec angles, and the error bound of the float32 engine path: the
    rotation rounding plus |a| + |b| times the table entries' bound."""
    d, half = config.head_dim, config.head_dim // 2
    omega, c, _, _ = spec_yarn(config)
    phase = pos.double()[:, None] * omega  # [T, d/2]
    spec_table = torch.zeros(int(pos.max()) + 1, d, dtype=torch.float64)
    spec_table[pos] = torch.cat((c * phase.cos(), c * phase.sin()), dim=-1)
    want, rounding = naive_rope(x, spec_table, pos)
    table_bound = cos_sin_bound(config, pos)[:, None, :]  # [T, 1, d/2]
    ab = x[..., :half].double().abs() + x[..., half:].double().abs()
    from_table = ab * table_bound
    return want, rounding + torch.cat((from_table, from_table), dim=-1)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("name", ["20b", "d22", "factor1-d22"])
def test_rope_with_engine_table_matches_spec(name, positions):
    # End to end: the engine's table through rope_, against the rotation by the float64 spec angles.
    config = CONFIGS[name]
    pos = torch.tensor(POSITIONS[positions])
    g = torch.Generator().manual_seed(config.head_dim)
    q = torch.randn(2, len(pos), 4, config.head_dim, generator=g)
    k = torch.randn(2, len(pos), 1, config.head_dim, generator=g)
    q_want, q_bound = spec_rotation(config, q, pos)
    k_want, k_bound = spec_rotation(config, k, pos)
    reference.rope_(q, k, RotaryEmbedding(config, CPU).cos_sin(int(pos.max()) + 1), pos)
    assert ((q.double() - q_want).abs() <= q_bound).all()
    assert ((k.double() - k_want).abs() <= k_bound).all()


def test_plain_rope_preserves_pair_lengths():
    # factor 1 means c = 1: each (x_i, x_{i+d/2}) pair is rotated, so its length is unchanged up to
    # the table (cos, sin each within 1 ulp: |C² + S² − 1| ≤ 4u, length ×(1 ± 2u)) plus the rotation
    # rounding (each component ≤ 2u·(|aC| + |bS|) ≤ 2√2·u·length, so ≤ 4u·length for the pair).
    config = CONFIGS["factor1-d22"]
    half = config.head_dim // 2
    pos = torch.tensor(POSITIONS["scattered"])
    g = torch.Generator().manual_seed(5)
    q = torch.randn(len(pos), 3, config.head_dim, generator=g)
    k = torch.randn(len(pos), 1, config.head_dim, generator=g)
    before = q[..., :half].double().hypot(q[..., half:].double())
    reference.rope_(q, k, RotaryEmbedding(config, CPU).cos_sin(int(pos.max()) + 1), pos)
    after = q[..., :half].double().hypot(q[..., half:].double())
    assert ((after - before).abs() <= 6 * U32 * before).all()
