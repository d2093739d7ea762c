"""Refuse parsed answers whose exact evaluation would be astronomically expensive.

math-verify's parser builds sympy trees without evaluating them (`9^{9^{9}}` parses in
milliseconds); the time goes later, when `verify` calls `doit()` and `simplify`: sympy then
computes 9**387420489 digit by digit, (10!)! term by term, or expands (x+1)^{10000}. Such an
answer cannot be any reference (the largest exact number among the 1,639 real ones is 2^{1009},
304 digits; the largest exponent on a non-number is 3), so it is wrong, and saying so costs one
walk over the tree instead of a worker killed at the time limit.

`affordable` computes, bottom up, the exact value of every number-only subtree with Python's
own integers, refusing before any value would need more than `MAX_BITS` bits; other subtrees
(symbols, floats, sqrt(2), matrices) only bound the exponents applied to them. Whatever passes
can still be slow in sympy for other reasons: the Grader's hard time limit remains the net.
"""

from __future__ import annotations

import math
from fractions import Fraction

from sympy import Add, Mul, Pow, Product, Sum, binomial, factorial, gamma, subfactorial
from sympy.functions.combinatorial.factorials import factorial2

MAX_BITS = 1 << 15  # about 9,900 decimal digits: 2^{1009} and 100! are far below
MAX_EXPONENT = 100  # on a base that is not an exact number: x^{100}, \sqrt{2}^{100}
MAX_TERMS = 100  # terms of a \sum or \prod with numeric bounds


class _TooCostly(Exception):
    pass


def affordable(parsed: list) -> bool:
    """Whether every sympy object in a math-verify parse result is cheap to evaluate."""
    try:
        for item in parsed:
            if not isinstance(item, str):
                _exact(item)
    except (_TooCostly, RecursionError):
        return False
    return True


def _bits(q: Fraction) -> float:
    return math.log2(max(abs(q.numerator), q.denominator, 1))


def _exact(e) -> Fraction | None:
    """The exact rational value of `e` if it has one and it is cheap; None if it is not a
    rational number (or not worth knowing). Raises _TooCostly."""
    if getattr(e, "is_Rational", False):
        return Fraction(int(e.p), int(e.q))
    args = [_exact(a) for a in getattr(e, "args", ())]  # every subtree is checked
    known = all(a is not None for a in args)
    if isinstance(e, Pow):
        return _power(e.args[0], *args)
    if isinstance(e, (Add, Mul)) and known:
        if sum(_bits(a) for a in args) > MAX_BITS:  # bounds the result's size, either way
            raise _TooCostly
        return sum(args, Fraction(0)) if isinstance(e, Add) else math.prod(args, start=Fraction(1))
    if isinstance(e, (factorial, factorial2, subfactorial, gamma)) and known:
        return _factorial(args[0], shift=isinstance(e, gamma))
    if isinstance(e, binomial) and known:
        return _binomial(*args)
    if isinstance(e, (Sum, Product)):
        for limit in e.args[1:]:  # (i, a, b)
            a, b = (_exact(limit[1]), _exact(limit[2])) if len(limit) == 3 else (None, None)
            if a is not None and b is not None and abs(b - a) > MAX_TERMS:
                raise _TooCostly
    return None


def _power(base, b: Fraction | None, x: Fraction | None) -> Fraction | None:
    if x is None:  # 2^{x}, e^{i\pi}: sympy keeps them symbolic
        return None
    if b is None:  # x^{n}, \sqrt{2}^{n}, a matrix: expanded or multiplied out n times
        if abs(x) > MAX_EXPONENT and not base.is_Float:  # floats: one mpmath pow
            raise _TooCostly
        return None
    if abs(b) in (0, 1):  # 0, 1, -1 to any power stay small (the exponent was checked)
        return None
    # |b| >= 2 or a fraction: at least one bit per unit of exponent. A fractional power is
    # split too (2^{10^9/3} = 2^{333333333} 2^{1/3}), so |x| counts whole or not.
    if abs(x) > MAX_BITS or _bits(b) * abs(x) > MAX_BITS:
        raise _TooCostly
    return b ** int(x) if x.denominator == 1 else None


def _factorial(n: Fraction, shift: bool) -> Fraction | None:
    if n.denominator != 1 or n < 1:
        return None
    n = int(n) - shift  # gamma(n) = (n - 1)!
    if n.bit_length() > 32 or math.lgamma(n + 1) / math.log(2) > MAX_BITS:
        raise _TooCostly
    return Fraction(math.factorial(n))


def _binomial(n: Fraction, k: Fraction) -> Fraction | None:
    if n.denominator != 1 or k.denominator != 1 or not 0 <= k <= n:
        return None
    k = min(k, n - k)
    if n.numerator.bit_length() > 64 or k * math.log2(n) > MAX_BITS:  # C(n, k) <= n^k
        raise _TooCostly
    return Fraction(math.comb(int(n), int(k)))
