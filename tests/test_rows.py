"""The packed rows in which the checkpointed loops store states (`_rows.py`)."""

import jax
import jax.numpy as jnp
import numpy as np

from nde.adjoints._rows import SMALL, RowCodec


def _state():
    # Like a solver's loop state: a large solution and derivative beside scalar
    # times, flags and counters, and a small vector.
    return [
        jnp.arange(2 * SMALL, dtype=jnp.float32).reshape(SMALL, 2),
        jnp.asarray(0.25, jnp.float64),
        jnp.asarray(True),
        jnp.asarray(7, jnp.int32),
        jnp.asarray([1.5, -2.0, 3.25], jnp.float64),
        jnp.asarray(False),
        jnp.asarray(-3, jnp.int32),
        jnp.full((SMALL + 1,), 2.0, jnp.float32),
        jnp.asarray([[0.5]], jnp.float32),
    ]


def test_round_trip_is_exact_and_packs_small_leaves_by_dtype():
    state = _state()
    codec = RowCodec(state)
    row = codec.encode(state)
    # The two large leaves as they are; one vector each for float64, int32 (with
    # the booleans) and float32.
    assert len(row) == 5
    assert row[0] is state[0] and row[1] is state[7]
    assert sorted((r.dtype.name, r.shape) for r in row[2:]) == [
        ("float32", (1,)),
        ("float64", (4,)),
        ("int32", (4,)),
    ]
    back = codec.decode(row)
    for x, y in zip(state, back, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_under_jit_and_vmap():
    state = _state()
    codec = RowCodec(state)
    batched = [jnp.stack([x, x]) for x in state]
    fn = jax.jit(jax.vmap(lambda s: codec.decode(codec.encode(s))))
    for x, y in zip(batched, fn(batched), strict=True):
        np.testing.assert_array_equal(x, y)


def test_gradient_flows_through_the_packed_floats():
    state = _state()
    codec = RowCodec(state)

    def f(t, v):
        s = list(state)
        s[1], s[4] = t, v
        out = codec.decode(codec.encode(s))
        return out[1] ** 2 + jnp.sum(out[4] ** 3)

    dt, dv = jax.grad(f, argnums=(0, 1))(state[1], state[4])
    np.testing.assert_allclose(dt, 2 * state[1])
    np.testing.assert_allclose(dv, 3 * state[4] ** 2)
