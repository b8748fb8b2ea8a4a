"""JAX's persistent compilation cache, on by default under the runs folder.

Compiling a neural-ODE train step takes seconds (the solver's loop, its adjoint and
the vector field are compiled together); with the cache, a rerun of the same
program (another seed, a resumed run, the next sweep job) loads the executable
from disk instead. JAX reads the cache directory when it compiles for the first
time in a process, so the CLI enables it before anything else runs; a directory
already set by the user (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) wins.
"""

import logging
import pathlib

import jax

log = logging.getLogger("nde.training")


def enable_compilation_cache(directory: str | None) -> str | None:
    """Point JAX's persistent compilation cache at `directory` (created if needed)
    unless a cache directory is already configured; return the one in use."""
    current = jax.config.jax_compilation_cache_dir
    if current or directory is None:
        return current
    path = pathlib.Path(directory).absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX's defaults only cache compilations over one second; a train step is
    # longer, but its evaluation and initialisation functions are worth keeping too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    log.debug("JAX compilation cache: %s", path)
    return str(path)
