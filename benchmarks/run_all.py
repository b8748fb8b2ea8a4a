"""Run every benchmark; print Markdown to stdout and write it (and the raw numbers
as JSON) to `benchmarks/out/`.

    python -m benchmarks.run_all [--quick] [--cases neural_fixed,tiny_fixed]
"""

import json
import pathlib
import sys
import time

from . import ode_forward, ode_gradient, ode_gradient_memory, sde, training

OUT = pathlib.Path(__file__).parent / "out"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    md, data = ode_forward.main(argv)
    data["wall_s"] = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    (OUT / "ode_forward.md").write_text(md)
    (OUT / "ode_forward.json").write_text(json.dumps(data, indent=1))
    print(md)
    print(
        f"(written to {OUT}/ode_forward.md and .json; {data['wall_s']:.0f} s in all)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    md, data = ode_gradient.main(argv)
    data["wall_s"] = time.perf_counter() - start
    (OUT / "ode_gradient.md").write_text(md)
    (OUT / "ode_gradient.json").write_text(json.dumps(data, indent=1))
    print(md)
    print(f"(written to {OUT}/ode_gradient.md and .json)", file=sys.stderr)
    if "--quick" not in argv:
        # Peak memory of long solves' gradients: one subprocess per case.
        md, data = ode_gradient_memory.main([])
        (OUT / "ode_gradient_memory.md").write_text(md)
        (OUT / "ode_gradient_memory.json").write_text(json.dumps(data, indent=1))
        print(md)
    start = time.perf_counter()
    md, data = training.main(["--quick"] if "--quick" in argv else [])
    data["wall_s"] = time.perf_counter() - start
    (OUT / "training.md").write_text(md)
    (OUT / "training.json").write_text(json.dumps(data, indent=1))
    print(md)
    print(f"(written to {OUT}/training.md and .json)", file=sys.stderr)
    start = time.perf_counter()
    # Neural SDEs against Diffrax and torchsde; peak memory only on a full run.
    md, data = sde.main(["--quick"] if "--quick" in argv else ["--memory"])
    data["wall_s"] = time.perf_counter() - start
    (OUT / "sde.md").write_text(md)
    (OUT / "sde.json").write_text(json.dumps(data, indent=1))
    print(md)
    print(f"(written to {OUT}/sde.md and .json)", file=sys.stderr)


if __name__ == "__main__":
    main()
