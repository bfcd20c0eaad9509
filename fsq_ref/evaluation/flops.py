"""Model FLOPs of a JAX function: the multiply-adds of its matrix products and convolutions, 2 FLOPs each, counted on
its jaxpr.

XLA's own cost analysis of a compiled function counts the body of a loop once, whatever its trip count; token-by-token
decoding scans over the transformer's blocks and MaskGIT decodes in a `fori_loop`, so it undercounts them by the
depth or the number of steps. Counting on the jaxpr multiplies a scan's body by its length. Elementwise work
(activations, normalisation, the optimiser) is left out, as model-FLOP-utilisation figures usually do: it is small
next to the products and its cost is memory traffic, not arithmetic.
"""

import math
from typing import Callable

import equinox as eqx


def _dot_flops(eqn) -> int:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    return 2 * math.prod(out) * math.prod(lhs[d] for d in contract)


def _conv_flops(eqn) -> int:
    rhs = eqn.invars[1].aval.shape  # the kernel: input features / groups and spatial sizes in its non-output axes
    out = eqn.outvars[0].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    per_output = math.prod(rhs[d] for d in spec[1:])
    return 2 * math.prod(out) * per_output


def _inner(param):
    """The jaxpr inside a call's parameter (a ClosedJaxpr or a Jaxpr), or None."""
    if hasattr(param, "eqns"):
        return param
    return getattr(param, "jaxpr", None) if hasattr(param, "consts") else None


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:  # calls (jit, custom derivatives, remat, while bodies counted once): their inner jaxprs
            inner = [_inner(param) for param in eqn.params.values()]
            total += sum(_jaxpr_flops(j) for j in inner if j is not None)
    return total


def count(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of the matrix products and convolutions of one call fn(*args, **kwargs), traced, not run (non-array
    arguments are static, as under `eqx.filter_jit`)."""
    closed, *_ = eqx.filter_make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return _jaxpr_flops(closed.jaxpr)
