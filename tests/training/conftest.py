"""Fixtures of the training tests.

Every Trainer compiles its train step afresh (the step closes over the trainer), so
these tests would spend most of their time in XLA compiling the same tiny step. They
share JAX's persistent compilation cache instead (the feature the trainer turns on
for real runs): in-process for the duration of each test only, so that other tests
in the same worker are unaffected, and in the subprocesses they start.
"""

import jax
import pytest
from jax._src import compilation_cache  # reset_cache: private, tests only


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(autouse=True)
def _compilation_cache(cache_dir):
    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()
