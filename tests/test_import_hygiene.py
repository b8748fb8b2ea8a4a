"""nde never imports `diffrax` nor `equinox.internal`.

Two independent checks: the import statements nde actually executes (recorded by
a hook on `__import__` in a fresh interpreter, while importing nde and running
solves that touch every part of it), and a scan of the source's syntax tree for
imports and attribute accesses (which also covers code paths not run here).

`import equinox` itself imports `equinox.internal`, so "is it in `sys.modules`"
is no test of nde for that package; the hook records *who* imports what.
"""

import ast
import json
import pathlib
import subprocess
import sys

import nde

PACKAGE_DIR = pathlib.Path(nde.__file__).parent
FORBIDDEN = ("diffrax", "equinox.internal")


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


_RECORDER = r"""
import builtins, importlib, json, sys

records = []  # (importing module, imported module, names imported from it)
_import = builtins.__import__
_import_module = importlib.import_module


def _resolve(name, globals, level):
    if not level:
        return name
    package = (globals or {}).get("__package__") or ""
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{name}" if name else base


def hooked_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    records.append([importer, _resolve(name, globals, level), list(fromlist or ())])
    return _import(name, globals, locals, fromlist, level)


def hooked_import_module(name, package=None):
    importer = sys._getframe(1).f_globals.get("__name__", "")
    records.append([importer, name, []])
    return _import_module(name, package)


builtins.__import__ = hooked_import
importlib.import_module = hooked_import_module

import jax
import jax.numpy as jnp
import nde

term = nde.ODETerm(lambda t, y, args: -y)


@jax.jit
def solve(y0):
    sol = nde.diffeqsolve(
        term, nde.Tsit5(scan_stages=True), 0.0, 1.0, None, y0,
        saveat=nde.SaveAt(ts=[0.5, 1.0], dense=True),
        progress_meter=nde.TqdmProgressMeter(),
        stepsize_controller=nde.PIDController(rtol=1e-3, atol=1e-3),
    )
    return sol.ys.sum() + sol.evaluate(0.3).sum()


solve(jnp.array([1.0]))
# The default adjoint's backward pass.
jax.jit(jax.grad(
    lambda y0: nde.diffeqsolve(term, nde.Euler(), 0.0, 1.0, 0.5, y0).ys.sum()
))(jnp.array([1.0]))
print(json.dumps({"records": records, "diffrax_loaded": "diffrax" in sys.modules}))
"""


def test_runtime_imports_of_nde():
    out = subprocess.run(
        [sys.executable, "-c", _RECORDER],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE_DIR.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    nde_imports = [
        (importer, name, fromlist)
        for importer, name, fromlist in report["records"]
        if importer == "nde" or importer.startswith("nde.")
    ]
    # The hook works: nde's own imports were recorded.
    assert any(name == "equinox" for _, name, _ in nde_imports)
    bad = [
        (importer, name, fromlist)
        for importer, name, fromlist in nde_imports
        if _is_forbidden(name) or any(_is_forbidden(f"{name}.{f}") for f in fromlist)
    ]
    assert not bad, f"nde imports forbidden modules: {bad}"
    assert not report["diffrax_loaded"]


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _violations(source: str, label: str) -> list[str]:
    tree = ast.parse(source)
    aliases = {"equinox"}  # names bound to the equinox package in this source
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "equinox"}
    found = []
    for node in ast.walk(tree):
        where = f"{label}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}" for a in node.names if _is_forbidden(a.name)
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(map(_is_forbidden, names)):
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute):
            head, _, rest = (_dotted(node) or "").partition(".")
            if head in aliases and _is_forbidden(f"equinox.{rest}"):
                found.append(f"{where}: {head}.{rest}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("diffrax"), __import__("equinox.internal")
            if _is_forbidden(node.value.strip()):
                found.append(f"{where}: the string {node.value!r}")
    return found


def test_source_never_imports_diffrax_or_equinox_internal():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 20  # the scan sees the whole package
    bad = [v for f in files for v in _violations(f.read_text(), str(f))]
    assert not bad, "\n".join(bad)


def test_the_source_scan_catches_violations():
    """The scan is not vacuous: it flags each way of reaching the forbidden
    modules, and not a mere mention of Diffrax."""
    snippets = [
        "import diffrax",
        "import diffrax.foo as dfx",
        "from diffrax import diffeqsolve",
        "import equinox.internal as eqxi",
        "from equinox.internal import while_loop",
        "from equinox import internal",
        "import equinox as eqx\nx = eqx.internal.while_loop",
        "import equinox\nx = equinox.internal",
        "import importlib\nimportlib.import_module('diffrax')",
    ]
    for snippet in snippets:
        assert _violations(snippet, "probe"), snippet
    clean = 'import equinox as eqx\n"""Like Diffrax\'s."""\nx = eqx.Module\n'
    assert not _violations(clean, "probe")
