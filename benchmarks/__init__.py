"""Benchmarks of nde against Diffrax, `jax.experimental.ode` and hand-written
baselines. Run them all with `python -m benchmarks.run_all` (`make bench`)."""
