"""Make closed-over arrays of vector fields explicit, so custom derivative rules
can see them.

A vector field written as a closure, `lambda t, y, args: model(y)`, hides `model`'s
parameters from the `terms` PyTree. A custom VJP (such as `BacksolveAdjoint`'s) only
receives gradients for its explicit inputs, so it would miss them: JAX raises a
`CustomVJPException`, or worse, the gradient is silently zero. Closure-converting
the vector field turns every array it closes over into a leaf of the term, which
`BacksolveAdjoint` then differentiates like any other parameter.
"""

import dataclasses

import equinox as eqx

from .._terms import AbstractTerm


def _convert_value(value, t, y, args):
    if isinstance(value, AbstractTerm):
        return closure_convert_terms(value, t, y, args)
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(v, AbstractTerm) for v in value)
    ):
        return tuple(closure_convert_terms(v, t, y, args) for v in value)
    return value


def _may_close_over_arrays(fn) -> bool:
    # An `eqx.Module` (e.g. a vector field holding an MLP, or a bound method of
    # one) keeps its arrays as PyTree leaves already: nothing to convert, and not
    # converting it saves a trace of the vector field.
    return callable(fn) and not isinstance(fn, eqx.Module)


def closure_convert_terms(terms: AbstractTerm, t, y, args) -> AbstractTerm:
    """`terms` with each `vector_field` closure-converted at example `(t, y, args)`.

    Walks the terms (through `MultiTerm` and wrappers holding other terms) and
    replaces every `vector_field` that is a plain function (not an `eqx.Module`) by
    `eqx.filter_closure_convert` of it, whose leaves are the arrays it closes over.
    Nothing else about the terms changes. Needed by every adjoint with a custom
    derivative rule: JAX forbids tracers hidden in its non-differentiable inputs.
    """
    for field in dataclasses.fields(terms):
        if field.metadata.get("static", False):
            continue
        value = getattr(terms, field.name)
        if field.name == "vector_field" and _may_close_over_arrays(value):
            new = eqx.filter_closure_convert(value, t, y, args)
        else:
            new = _convert_value(value, t, y, args)
        if new is not value:
            terms = eqx.tree_at(lambda x, name=field.name: getattr(x, name), terms, new)
    return terms
