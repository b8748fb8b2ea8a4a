"""Resident memory of this process (Linux), shared by the memory benchmarks.

Each memory case runs in a fresh process; before the measured call it returns freed
heap to the system (`trim_heap`) and resets the high-water mark (`reset_peak`), so
that the peak (`rss_kib("VmHWM")`) is that of the call itself on top of what is
live.
"""

import ctypes
import gc
import pathlib


def rss_kib(field: str = "VmRSS") -> int:
    """The current (`VmRSS`) or peak (`VmHWM`) resident set size, in KiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux: clear_refs = 5)."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")


def trim_heap() -> None:
    """Collect garbage and return freed heap to the system (glibc's malloc_trim),
    so that what the compiler freed does not stay resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure without trimming
        pass
