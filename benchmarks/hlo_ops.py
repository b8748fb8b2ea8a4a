"""Profile what one loop iteration costs: count the operations in the body of every
`while` loop of the optimised (post-XLA) HLO of each contestant.

On CPU a small solve is dominated by per-iteration overhead, which grows with the
number of top-level instructions ("thunks": fusions, dots, copies, conditionals,
dynamic-update-slices, ...) that the runtime executes per iteration; tuple
plumbing (parameter, get-tuple-element, tuple, constant, bitcast) is free.

    python -m benchmarks.hlo_ops [--cases tiny_fixed,lotka_volterra_f64] [--dump DIR]
"""

import argparse
import collections
import pathlib
import re
import sys

FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{$")
_CALLS = re.compile(
    r"(calls|body|condition|to_apply|true_computation|false_computation)"
    r"=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _split_type(rest: str) -> str:
    """Strip the result type off `TYPE opcode(...)...`; return `opcode(...)...`."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[i + 1 :].lstrip()
    return rest.split(" ", 1)[1] if " " in rest else rest


def parse(text: str) -> dict[str, list[tuple[str, str, list[str], str]]]:
    """computation name -> [(instruction name, opcode, called computations, line)]"""
    comps: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                comps[current] = []
            continue
        if line.startswith("}"):
            current = None
            continue
        s = line.strip()
        if s.startswith("ROOT "):
            s = s[5:]
        if " = " not in s:
            continue
        name, rest = s.split(" = ", 1)
        op = _split_type(rest).split("(", 1)[0].strip()
        called = [m.group(2) for m in _CALLS.finditer(rest)]
        for m in _BRANCHES.finditer(rest):
            called += [c.strip().lstrip("%") for c in m.group(1).split(",")]
        comps[current].append((name.lstrip("%"), op, called, s))
    return comps


def _entry(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("ENTRY"):
            return _HEADER.match(line).group(2)
    raise ValueError("no ENTRY computation")


def loop_bodies(text: str) -> list[dict]:
    """Every while loop (outermost first), with op counts of its body.

    `thunks`: top-level, non-free instructions of the body, counting those inside
    the branches of conditionals (one branch runs) and nested loops separately.
    """
    comps = parse(text)
    out = []

    def visit(comp, depth, path):
        for name, op, called, _ in comps[comp]:
            if op == "while":
                body = [c for c in called if c in comps]
                body_name = re.search(r"body=%?([\w.\-]+)", _line(comps, comp, name))
                cond_name = re.search(
                    r"condition=%?([\w.\-]+)", _line(comps, comp, name)
                )
                b, c = body_name.group(1), cond_name.group(1)
                out.append(
                    dict(
                        loop=name,
                        depth=depth,
                        path=path,
                        body=_count(comps, b),
                        cond=_count(comps, c),
                    )
                )
                del body
                visit(b, depth + 1, path + [name])
            elif op == "conditional":
                for c in called:
                    if c in comps:
                        visit(c, depth, path + [f"{name}:{c}"])

    visit(_entry(text), 0, [])
    return out


def _line(comps, comp, name):
    for n, _, _, line in comps[comp]:
        if n == name:
            return line
    raise KeyError(name)


def _count(comps, comp) -> dict:
    ops = collections.Counter(op for _, op, _, _ in comps[comp] if op not in FREE)
    fused_ops = 0
    for _, op, called, _ in comps[comp]:
        if op == "fusion":
            for c in called:
                fused_ops += sum(1 for _, o, _, _ in comps.get(c, []) if o not in FREE)
    return dict(thunks=sum(ops.values()), ops=dict(ops), ops_inside_fusions=fused_ops)


def summarise(name: str, text: str) -> str:
    lines = [f"### {name}"]
    for loop in loop_bodies(text):
        body = loop["body"]
        top = ", ".join(f"{k} {v}" for k, v in sorted(body["ops"].items()))
        lines.append(
            f"- while `{loop['loop']}` (depth {loop['depth']}"
            f"{', in ' + ' > '.join(loop['path']) if loop['path'] else ''}): "
            f"body {body['thunks']} thunks ({top}); "
            f"{body['ops_inside_fusions']} ops inside fusions; "
            f"cond {loop['cond']['thunks']} thunks"
        )
    return "\n".join(lines)


def main(argv=None):
    import jax

    from . import ode_forward as of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="")
    parser.add_argument("--dump", default="", help="write the HLO text here")
    opts = parser.parse_args(argv)
    wanted = {c for c in opts.cases.split(",") if c}
    for p in of.problems():
        if wanted and p.name not in wanted:
            continue
        print(f"## {p.name}\n")
        for name in p.contestants:
            compiled = (
                jax.jit(of.make_contestant(p, name)).lower(p.params, p.y0).compile()
            )
            text = compiled.as_text()
            if opts.dump:
                d = pathlib.Path(opts.dump)
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{p.name}_{name}.hlo").write_text(text)
            print(summarise(name, text) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
