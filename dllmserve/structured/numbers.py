"""Regular expressions of the JSON integers in a range: what `minimum` / `maximum` compile to
(outlines-core's JSON-schema compiler ignores them, which would let a bounded integer out of its
range). The integers are written as JSON writes them: no leading zeros, no "-0"."""

from __future__ import annotations


def integer_range_regex(lo: int | None, hi: int | None) -> str:
    """A regex whose full matches are exactly the decimal integers in [lo, hi] (None: unbounded
    on that side). Raises ValueError for an empty range."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    parts = []
    if lo is None or lo < 0:  # the negatives -x with x in [max(1, -hi), -lo]
        x_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append("-" + _natural_range(x_lo, None if lo is None else -lo))
    if hi is None or hi >= 0:
        parts.append(_natural_range(0 if lo is None or lo < 0 else lo, hi))
    return "(?:" + "|".join(parts) + ")"


def _natural_range(lo: int, hi: int | None) -> str:
    """Naturals in [lo, hi] (hi None: unbounded), lo >= 0, split by their number of digits."""
    parts = []
    top = len(str(lo)) if hi is None else len(str(hi))
    for digits in range(len(str(lo)), top + 1):
        first = 0 if digits == 1 else 10 ** (digits - 1)
        a, b = max(lo, first), 10**digits - 1 if hi is None else min(hi, 10**digits - 1)
        if a <= b:
            parts.append(_same_length(str(a), str(b)))
    if hi is None:  # every longer number
        parts.append(f"[1-9][0-9]{{{top},}}")
    return "(?:" + "|".join(parts) + ")"


def _same_length(a: str, b: str) -> str:
    """Numbers of len(a) digits in [a, b], a <= b, by their first digit."""
    if a == b:
        return a
    if len(a) == 1:
        return f"[{a}-{b}]"
    if a[0] == b[0]:
        return a[0] + _same_length(a[1:], b[1:])
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return f"[{a[0]}-{b[0]}][0-9]{{{rest}}}"
    parts = [a[0] + _same_length(a[1:], "9" * rest)]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{rest}}}")
    parts.append(b[0] + _same_length("0" * rest, b[1:]))
    return "(?:" + "|".join(parts) + ")"
