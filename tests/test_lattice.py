import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crfcore import Lattice
from crfcore._kernels.lattice import feature_range
from naive import dense_operator, gaussian_matrix


@given(
    d=st.integers(1, 16),
    n=st.integers(1, 300),
    c=st.integers(1, 4),
    spread=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_adjoint_identity(d, n, c, spread, seed):
    # <K a, b> == <a, K^T b>: the transpose (reversed blur order) is exact, to float64 rounding.
    rng = np.random.default_rng(seed)
    lat = Lattice(rng.normal(scale=spread, size=(n, d)))
    a, b = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    lhs = np.sum(lat.filter(a) * b)
    rhs = np.sum(a * lat.filter(b, transpose=True))
    scale = np.sum(np.abs(lat.filter(np.abs(a))) * np.abs(b))
    assert abs(lhs - rhs) <= 1e-12 * scale


def test_transpose_is_the_transpose_matrix(rng):
    lat = Lattice(rng.normal(size=(40, 3)))
    k = dense_operator(lat, 40)
    kt = lat.filter(np.eye(40), transpose=True)
    np.testing.assert_allclose(kt, k.T, rtol=0, atol=1e-13)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_matches_brute_force_gaussian_on_smooth_signals(rng, d):
    # The lattice approximates exp(-|df|^2 / 2) up to a constant factor, so compare *normalised* filtering
    # (K v / K 1) with the exact Gaussian's. Adams et al. (2010) report errors of a few percent; on a smooth
    # signal densely sampled (3000 points in [-4, 4]^d) we allow 5% of the signal's range at any interior
    # point (the measured maximum is about 3%, the mean about 1%). A wrong width (sigma 0.8 or 1.2) gives
    # 13-15%, so the tolerance does pin the kernel's scale.
    n = 3000
    f = rng.uniform(-4, 4, size=(n, d))
    v = np.sin(0.8 * f[:, :1]) + np.cos(0.5 * f[:, -1:])
    lat = Lattice(f)
    out = lat.filter(np.hstack([v, np.ones((n, 1))]))
    g = gaussian_matrix(f)
    exact = (g @ v)[:, 0] / g.sum(1)
    approx = out[:, 0] / out[:, 1]
    inner = (np.abs(f) < 2).all(axis=1)
    err = np.abs(approx - exact)[inner]
    assert err.max() < 0.05 * np.ptp(v)
    assert err.mean() < 0.015 * np.ptp(v)
    for wrong in (0.8, 1.2):
        gw = gaussian_matrix(f / wrong)
        err_w = np.abs(approx - (gw @ v)[:, 0] / gw.sum(1))[inner]
        assert err_w.mean() > 3 * err.mean()


def test_isolated_points_do_not_mix(rng):
    # Points far apart share no lattice vertex nor blur neighbour: each one filters as if it were alone.
    f = np.arange(10)[:, None] * 100.0 * np.ones((1, 3)) + rng.uniform(size=(10, 3))
    v = rng.normal(size=(10, 2))
    out = Lattice(f).filter(v)
    alone = np.vstack([Lattice(f[i : i + 1]).filter(v[i : i + 1]) for i in range(10)])
    np.testing.assert_allclose(out, alone, rtol=1e-13)
    assert np.all(out / v > 0)


def test_deterministic_bitwise(rng):
    f = rng.normal(scale=3, size=(5000, 5))
    v = rng.normal(size=(5000, 3)).astype(np.float32)
    first = Lattice(f).filter(v)
    for _ in range(3):
        again = Lattice(f).filter(v)
        assert np.array_equal(first, again)


def test_large_coordinates_do_not_overflow(rng):
    # densecrf's keys are int16, so coordinates past 32767 wrap around and unrelated points collide.
    # Ours are int32: far from the origin the filter is as accurate as near it.
    n = 1500
    f = rng.uniform(-3, 3, size=(n, 2))
    v = np.sin(f[:, :1]) + 2.0
    g = gaussian_matrix(f)
    exact = (g @ v)[:, 0] / g.sum(1)
    for shift in (0.0, 1e5, 3e6):
        out = Lattice(f + shift).filter(np.hstack([v, np.ones((n, 1))]))
        err = np.abs(out[:, 0] / out[:, 1] - exact)[(np.abs(f) < 1.5).all(1)]
        assert err.max() < 0.05 * np.ptp(v), shift


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dtypes(rng, dtype):
    f = rng.normal(size=(100, 3)).astype(dtype)
    v = rng.normal(size=(100, 2)).astype(dtype)
    out = Lattice(f).filter(v)
    assert out.dtype == (np.float64 if dtype == np.float64 else np.float32)
    ref = Lattice(f.astype(np.float64)).filter(v.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_one_dimensional_values_and_views(rng):
    f = rng.normal(size=(60, 4))
    lat = Lattice(f[::-1])  # non-contiguous
    v = rng.normal(size=(60, 2))
    v.setflags(write=False)
    np.testing.assert_allclose(lat.filter(v[:, 0]), lat.filter(v)[:, 0])
    np.testing.assert_allclose(lat.filter(v[:, ::2]), lat.filter(np.ascontiguousarray(v[:, ::2])))


@given(
    n=st.integers(1, 20_000),
    d=st.integers(1, 6),
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf]),
    seed=st.integers(0, 2**32 - 1),
)
def test_feature_range_kernel(n, d, bad, seed):
    # The parallel pass that sizes the lattice's keys: NumPy's min and max per feature (over up to 4 blocks of
    # points here), and a bad value anywhere (any block, any feature) is reported as not finite.
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=rng.uniform(0.1, 100.0), size=(n, d))
    if bad is not None:
        f[rng.integers(n), rng.integers(d)] = bad
    fmin, fmax, finite = feature_range(f)
    assert finite == (bad is None)
    if bad is None:
        np.testing.assert_array_equal(fmin, f.min(axis=0))
        np.testing.assert_array_equal(fmax, f.max(axis=0))


@pytest.mark.parametrize(
    "features, exc, match",
    [
        (np.zeros((0, 3)), ValueError, "empty"),
        (np.zeros(10), ValueError, r"shape \(N, d\)"),
        (np.array([[0.0, np.nan]]), ValueError, "NaN"),
        (np.array([[0.0, np.inf]]), ValueError, "NaN or infinite"),
        (np.array([[1 + 1j, 0]]), TypeError, "real numeric"),
        (np.array([["a", "b"]]), TypeError, "real numeric"),
        (np.array([[1e12, 0.0]]), ValueError, "too large"),
    ],
)
def test_bad_features(features, exc, match):
    with pytest.raises(exc, match=match):
        Lattice(features)


def test_bad_values(rng):
    lat = Lattice(rng.normal(size=(10, 2)))
    with pytest.raises(ValueError, match=r"shape \(10, C\)"):
        lat.filter(np.ones((9, 1)))
    with pytest.raises(ValueError, match="NaN"):
        lat.filter(np.full((10, 1), np.nan))
    with pytest.raises(TypeError, match="floating-point"):
        lat.filter(np.ones((10, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        lat.filter(np.ones((10, 0)))


def test_same_result_whatever_the_thread_count(rng):
    import numba

    f = rng.normal(scale=3, size=(20000, 5))  # several construction chunks
    v = rng.normal(size=(20000, 2)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            lat = Lattice(f)
            outs.append((lat.num_vertices, lat.filter(v), lat.filter(v, transpose=True)))
    finally:
        numba.set_num_threads(before)
    for m, out, out_t in outs[1:]:
        assert m == outs[0][0]
        assert np.array_equal(out, outs[0][1]) and np.array_equal(out_t, outs[0][2])
