"""Brownian motion: determinism, consistency, Gaussian statistics, Lévy area."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

import nde

N = 4000  # sample paths for the statistics tests
# With N samples, a sample variance has relative standard error sqrt(2 / N) = 2.2%
# and a sample correlation of independent variables standard error 1 / sqrt(N) =
# 1.6%; the tolerances below are 4 standard errors. Keys are fixed, so the tests are
# deterministic; these bounds only say the numbers are not tuned to pass.
VAR_RTOL = 4 * np.sqrt(2 / N)
CORR_ATOL = 4 / np.sqrt(N)


def tree(key, levy=nde.SpaceTimeLevyArea, shape=(), tol=2**-10):
    return nde.VirtualBrownianTree(0.0, 2.0, tol, shape, key, levy_area=levy)


@eqx.filter_jit
def _increments(bm, s, u):
    """`bm.evaluate(s[i], u[i], use_levy=True)` for each i: one compiled query."""
    return jax.vmap(lambda s, u: bm.evaluate(s, u, use_levy=True))(s, u)


@eqx.filter_jit
def _values(bm, t):
    return jax.vmap(bm.evaluate)(t)


def test_deterministic_and_consistent():
    bm = tree(jr.key(0), shape=(3,))
    s, t, u = np.sort(np.asarray(jr.uniform(jr.key(1), (3, 5), maxval=2.0)), axis=0)
    zeros = np.zeros_like(s)
    # One batch: [s, u], [s, t], [t, u], [0, s], [0, u], [u, s].
    starts = np.concatenate([s, s, t, zeros, zeros, u])
    ends = np.concatenate([u, t, u, s, u, s])
    out = _increments(bm, starts, ends)
    whole, left, right, ws, wu, back = np.split(np.asarray(out.W), 6)
    np.testing.assert_allclose(whole, left + right, rtol=0, atol=1e-14)
    np.testing.assert_allclose(whole, wu - ws, rtol=0, atol=1e-14)
    # The interval backwards: negated increment, the same Lévy area.
    np.testing.assert_array_equal(back, -whole)
    h = np.split(np.asarray(out.H), 6)
    np.testing.assert_array_equal(h[5], h[0])
    np.testing.assert_allclose(out.dt, ends - starts)
    # Deterministic for a key; W(t0) = 0; other keys, other paths.
    np.testing.assert_array_equal(_increments(bm, starts, ends).W, out.W)
    values = _values(bm, jnp.concatenate([jnp.zeros(1), s]))
    np.testing.assert_allclose(values[0], 0.0)
    np.testing.assert_allclose(values[1:], ws, rtol=1e-14)
    other = _increments(tree(jr.key(2), shape=(3,)), starts, ends)
    assert not np.allclose(other.W, out.W)


# Intervals aligned with the tree's leaves ([0, 1], [1, 2], [0, 2]), and one that is
# not ([0.3, 1.45]).
_STARTS, _ENDS = np.array([0.0, 1.0, 0.0, 0.3]), np.array([1.0, 2.0, 2.0, 1.45])


@jax.jit
@jax.vmap
def _samples(key):
    levy = _increments(tree(key), _STARTS, _ENDS)
    plain = tree(key, levy=nde.BrownianIncrement).evaluate(0.3, 1.45)
    return levy.W, levy.H, plain


def test_gaussian_statistics_and_levy_area():
    ws, hs, plain = map(np.asarray, _samples(jr.split(jr.key(3), N)))
    (w1, w2, w, w_odd), (h1, h2, h, h_odd) = ws.T, hs.T
    for x, var in [(w1, 1), (w2, 1), (w, 2), (w_odd, 1.15), (plain, 1.15)]:
        assert np.var(x) == pytest.approx(var, rel=VAR_RTOL)
        assert abs(np.mean(x)) < 4 * np.sqrt(var / N)
        assert scipy.stats.kstest(x / np.sqrt(var), "norm").pvalue > 1e-3
    # H over an interval of length h has variance h / 12 and is independent of W.
    for x, var in [(h1, 1 / 12), (h, 2 / 12), (h_odd, 1.15 / 12)]:
        assert np.var(x) == pytest.approx(var, rel=VAR_RTOL)
    for a, b in [(w1, w2), (h1, h2), (w1, h1), (w, h), (w1, h2), (w_odd, h_odd)]:
        assert abs(np.corrcoef(a, b)[0, 1]) < CORR_ATOL
    # Chen's relation for two halves: H = (H1 + H2) / 2 + (W1 - W2) / 4.
    np.testing.assert_allclose(h, (h1 + h2) / 2 + (w1 - w2) / 4, atol=1e-13)
    np.testing.assert_allclose(w, w1 + w2, atol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_node_samples_are_independent_standard_normals(impl, dtype):
    """The tree's random numbers: per node id, `num` x `shape` normals. Threefry keys
    take the counter-based draw (the same numbers from a typed key and its raw
    data), other implementations `fold_in`; both must be N(0, 1), with no
    correlation between the numbers of a node or of neighbouring nodes."""
    from nde._brownian_tree import _node_samples

    key = jr.key(7, impl=impl)
    ids = jnp.arange(1, 1 + 2 * N, dtype=jnp.uint32).reshape(2, N)
    draw = jax.jit(_node_samples, static_argnums=(2, 3, 4))
    z = np.asarray(draw(key, ids, 2, (3,), dtype))
    assert z.shape == (2, N, 2, 3) and z.dtype == dtype and np.isfinite(z).all()
    flat = z.reshape(-1)
    assert np.var(flat) == pytest.approx(1, rel=VAR_RTOL)
    assert abs(np.mean(flat)) < 4 / np.sqrt(flat.size)
    assert scipy.stats.kstest(flat, "norm").pvalue > 1e-3
    per_node = z.reshape(2 * N, 6)
    columns = np.concatenate([per_node[:-1], per_node[1:]], axis=1)  # and the next id
    corr = np.corrcoef(columns.T) - np.eye(12)
    assert np.abs(corr).max() < CORR_ATOL
    if impl == "threefry2x32":
        raw = draw(jr.key_data(key), ids, 2, (3,), dtype)
        np.testing.assert_array_equal(raw, z)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_extreme_bits_give_finite_normals(dtype):
    """The uniforms behind the normals stay strictly inside (-1, 1), symmetric, for
    the extreme bit patterns too (one draw in 2**23 in float32: a training run
    meets them), compiled as in a solve. An infinite normal there once turned a
    neural SDE's loss into NaN."""
    from nde._random import _uniform_open

    low = np.array([0, 1, 511, 512, 2**31 - 1], np.uint32)
    words = np.concatenate([low, ~low[::-1]])  # and their complements
    if dtype == jnp.float64:
        words = np.stack([words, words], axis=-1)
    u = np.asarray(jax.jit(_uniform_open, static_argnums=1)(words, dtype))
    assert u.dtype == dtype and np.all(np.abs(u) < 1)
    np.testing.assert_array_equal(u[::-1], -u)  # complementary bits, opposite values
    normals = jax.jit(jax.scipy.special.erfinv)(u)
    assert np.isfinite(np.asarray(normals)).all()


def test_pytree_shape_and_dtype():
    shape = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float32),
        "b": jax.ShapeDtypeStruct((), jnp.float64),
    }
    bm = nde.VirtualBrownianTree(0.0, 1.0, 1e-2, shape, jr.key(0))
    out = eqx.filter_jit(lambda bm: bm.evaluate(0.2, 0.7))(bm)
    assert out["a"].shape == (2,) and out["a"].dtype == jnp.float32
    assert out["b"].shape == () and out["b"].dtype == jnp.float64
    unsafe = nde.UnsafeBrownianPath(shape, jr.key(0))
    assert unsafe.evaluate(0.2, 0.7)["a"].dtype == jnp.float32


def test_traced_interval_matches_static():
    # t0, t1, tol traced (a dynamic tree depth) give the same path.
    static = tree(jr.key(4)).evaluate(0.37, 1.2)
    traced = jax.jit(
        lambda t0, t1, tol: nde.VirtualBrownianTree(
            t0, t1, tol, (), jr.key(4)
        ).evaluate(0.37, 1.2)
    )(0.0, 2.0, 2.0**-10)
    plain = nde.VirtualBrownianTree(0.0, 2.0, 2.0**-10, (), jr.key(4))
    np.testing.assert_allclose(traced, plain.evaluate(0.37, 1.2), rtol=1e-14)
    assert static.shape == ()


@jax.jit
@jax.vmap
def _unsafe_samples(key):
    bm = nde.UnsafeBrownianPath((), key, levy_area=nde.SpaceTimeLevyArea)
    a = bm.evaluate(0.0, 0.5, use_levy=True)
    b = bm.evaluate(0.5, 0.7, use_levy=True)
    return a.W, a.H, b.W, bm.evaluate(0.0, 0.5), bm.evaluate(0.5, 0.0)


def test_unsafe_brownian_path():
    w, h, w2, again, back = map(np.asarray, _unsafe_samples(jr.split(jr.key(5), N)))
    # Repeating a query repeats the sample; the interval backwards negates it.
    np.testing.assert_array_equal(w, again)
    np.testing.assert_array_equal(w, -back)
    assert np.var(w) == pytest.approx(0.5, rel=VAR_RTOL)
    assert np.var(h) == pytest.approx(0.5 / 12, rel=VAR_RTOL)
    assert np.var(w2) == pytest.approx(0.2, rel=VAR_RTOL)
    assert abs(np.corrcoef(w, w2)[0, 1]) < CORR_ATOL
    assert abs(np.corrcoef(w, h)[0, 1]) < CORR_ATOL


def test_errors():
    key = jr.key(0)
    with pytest.raises(ValueError, match=r"t0 < t1; got t0=1.0, t1=0.0"):
        nde.VirtualBrownianTree(1.0, 0.0, 0.1, (), key)
    with pytest.raises(ValueError, match=r"tol=\.\.\.\)` must be positive; got tol=0"):
        nde.VirtualBrownianTree(0.0, 1.0, 0.0, (), key)
    with pytest.raises(
        ValueError, match=r"levy_area=\.\.\.\)` must be `BrownianIncrement`"
    ):
        nde.VirtualBrownianTree(0.0, 1.0, 0.1, (), key, levy_area="space-time")
    with pytest.raises(ValueError, match="`shape` must be a tuple of ints"):
        nde.UnsafeBrownianPath([3], key)
    with pytest.raises(ValueError, match="levy_area=SpaceTimeLevyArea"):
        nde.VirtualBrownianTree(0.0, 1.0, 0.1, (), key).evaluate(0, 1, use_levy=True)
    with pytest.raises(ValueError, match=r"evaluate\(t0, t1\)"):
        nde.UnsafeBrownianPath((), key).evaluate(0.5)
    with pytest.raises(Exception, match="queried outside"):
        jax.block_until_ready(tree(key).evaluate(0.5, 2.5))


def test_a_solve_checks_its_tree_once():
    """Inside a solve, a `VirtualBrownianTree` is not range-checked at every query
    (a host callback each time, which makes the compiled solve synchronous and
    uncacheable): the solve checks its interval against the tree's once. Concrete:
    a `ValueError` naming both; traced: the result code `brownian_outside`, and no
    step is taken."""
    key = jr.key(0)
    drift = nde.ODETerm(lambda t, y, args: -y)

    def solve(t1, bm_t1, throw=False):
        bm = nde.VirtualBrownianTree(0.0, bm_t1, 1e-3, (), key)
        diffusion = nde.ControlTerm(lambda t, y, args: 0.5 * y, bm)
        sol = nde.diffeqsolve(
            nde.MultiTerm(drift, diffusion), nde.Euler(), 0.0, t1, 0.1, 1.0, throw=throw
        )
        return sol.ys, sol.result._value, sol.stats["num_steps"]

    hlo = jax.jit(solve).lower(1.0, 1.0).as_text()
    assert "callback" not in hlo
    _, result, steps = jax.jit(solve)(1.0, 1.0)
    assert result == nde.RESULTS.successful._value and steps == 10
    _, result, steps = jax.jit(solve)(1.5, 1.0)  # the solve leaves the tree
    assert result == nde.RESULTS.brownian_outside._value and steps == 0
    with pytest.raises(Exception, match="queried outside"):
        jax.block_until_ready(jax.jit(solve, static_argnums=2)(1.5, 1.0, True))
    with pytest.raises(ValueError, match=r"t0=0.0, t1=1.0.*\[0.0, 1.5\]"):
        solve(1.5, 1.0)
