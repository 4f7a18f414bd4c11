"""Safe arithmetic on model text: a small tokenizer and recursive-descent parser that builds an expression
tree and evaluates it exactly (``fractions.Fraction``) under hard limits. Model text is never ``eval``-ed.
Countdown's checker (Parts 6, 8) and the ReAct agents' ``Calculate`` tool (Part 7) both use it::

    from nanofrontier.tasks import expression as ex
    e = ex.parse("(25-7)*3")            # an Expression: e.value == Fraction(54), e.numbers == [25, 7, 3]
    ex.parse("2**10", ex.CALCULATOR)     # powers, unary minus and decimals only where the limits allow them
    ex.parse("5/(3-3)")                  # raises ExpressionError("division by zero")

The grammar (``^`` and ``**`` only with ``allow_power``, a leading ``-`` only with ``allow_unary_minus``,
``1.5`` only with ``allow_decimals``)::

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/') unary)*
    unary := '-' unary | power
    power := atom (('**' | '^') unary)?        (right-associative: 2^3^2 = 2^9)
    atom  := NUMBER | '(' expr ')'

Every refusal is an :class:`ExpressionError` (a ``ValueError``) whose message says why: text too long, a
character that is not arithmetic, a literal with too many digits, parentheses nested too deep, division by
zero, an exponent out of range, or an intermediate value whose numerator or denominator is too large. The
limits make every parse and evaluation cheap whatever the input (no huge integers are ever built).
"""

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction


class ExpressionError(ValueError):
    """The text is not an expression these limits accept; the message says why."""


@dataclass(frozen=True)
class Limits:
    """What the parser accepts. The defaults are countdown's rules (integers, + − × ÷ and parentheses)."""

    max_chars: int = 200  # the whole text
    max_depth: int = 16  # parentheses nested at most this deep
    max_digits: int = 6  # per literal (digits before and after a decimal point together)
    max_magnitude: int = 10**18  # bound on every intermediate numerator and denominator
    allow_power: bool = False  # '**' and '^'
    max_exponent: int = 64  # |exponent| when powers are allowed; it must be a whole number
    allow_unary_minus: bool = False
    allow_decimals: bool = False


COUNTDOWN = Limits()
CALCULATOR = replace(COUNTDOWN, allow_power=True, allow_unary_minus=True, allow_decimals=True, max_digits=12)

_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "/": "/", "÷": "/", "^": "^"}
_DIGITS = "0123456789"


@dataclass(frozen=True)
class Expression:
    """A parsed expression tree. ``op`` is ``"num"`` (a literal: ``value`` is the number), ``"neg"`` (one
    child) or one of ``+ - * / ^`` (two children). ``value`` is the node's exact value, computed as the
    tree is built, so a tree that exists is within the limits."""

    op: str
    value: Fraction
    children: tuple = ()
    numbers: list = field(default_factory=list, compare=False)  # literals in reading order (root only)

    def __str__(self):
        if self.op == "num":
            v = self.value
            return str(v.numerator) if v.denominator == 1 else str(float(v))
        if self.op == "neg":
            return f"-({self.children[0]})"
        a, b = self.children
        return f"({a} {'**' if self.op == '^' else self.op} {b})"


def tokenize(text, limits=COUNTDOWN):
    """``[(kind, value), ...]`` with kind ``"num"`` (a Fraction), ``"op"`` (``+ - * / ^``), ``"("`` or
    ``")"``; raises :class:`ExpressionError`."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\n":
            i += 1
        elif ch in _DIGITS:
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            digits = j - i
            if limits.allow_decimals and j + 1 < n and text[j] == "." and text[j + 1] in _DIGITS:
                k = j + 1
                while k < n and text[k] in _DIGITS:
                    k += 1
                digits += k - j - 1
                j = k
            if digits > limits.max_digits:
                raise ExpressionError(f"a number longer than {limits.max_digits} digits at position {i}")
            out.append(("num", Fraction(text[i:j])))
            i = j
        elif ch in _OPS:
            if ch == "*" and i + 1 < n and text[i + 1] == "*":
                if not limits.allow_power:
                    raise ExpressionError("'**' (powers) is not allowed")
                out.append(("op", "^"))
                i += 2
                continue
            if ch == "^" and not limits.allow_power:
                raise ExpressionError(f"character {ch!r} at position {i} is not arithmetic")
            out.append(("op", _OPS[ch]))
            i += 1
        elif ch in "()":
            out.append((ch, ch))
            i += 1
        else:
            raise ExpressionError(f"character {ch!r} at position {i} is not arithmetic")
    return out


class _Parser:
    def __init__(self, toks, limits):
        self.toks, self.i, self.limits, self.numbers = toks, 0, limits, []

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def _binary(self, op, a, b):
        lim = self.limits
        if op == "+":
            v = a.value + b.value
        elif op == "-":
            v = a.value - b.value
        elif op == "*":
            v = a.value * b.value
        elif op == "/":
            if b.value == 0:
                raise ExpressionError("division by zero")
            v = a.value / b.value
        else:  # '^': check the exponent and the result's size before computing anything large
            e = b.value
            if e.denominator != 1:
                raise ExpressionError(f"the exponent {e} is not a whole number")
            if abs(e) > lim.max_exponent:
                raise ExpressionError(f"the exponent {e} is out of range (at most {lim.max_exponent})")
            if a.value == 0 and e < 0:
                raise ExpressionError("division by zero (0 to a negative power)")
            big = max(abs(a.value.numerator), a.value.denominator)
            if big > 1 and abs(int(e)) * math.log10(big) > math.log10(lim.max_magnitude) + 1:
                raise ExpressionError(f"an intermediate value exceeds {lim.max_magnitude:.0e} in size")
            v = a.value ** int(e)
        return Expression(op, self._bound(v), (a, b))

    def _bound(self, v):
        m = self.limits.max_magnitude
        if abs(v.numerator) > m or v.denominator > m:
            raise ExpressionError(f"an intermediate value exceeds {m:.0e} in size")
        return v

    def expr(self, depth):
        node = self.term(depth)
        while self.peek()[0] == "op" and self.peek()[1] in "+-":
            op = self.toks[self.i][1]
            self.i += 1
            node = self._binary(op, node, self.term(depth))
        return node

    def term(self, depth):
        node = self.unary(depth)
        while self.peek()[0] == "op" and self.peek()[1] in "*/":
            op = self.toks[self.i][1]
            self.i += 1
            node = self._binary(op, node, self.unary(depth))
        return node

    def unary(self, depth, chain=0):
        if self.limits.allow_unary_minus and self.peek() == ("op", "-"):
            if chain >= self.limits.max_depth:
                raise ExpressionError(f"more than {self.limits.max_depth} signs in a row")
            self.i += 1
            inner = self.unary(depth, chain + 1)
            return Expression("neg", -inner.value, (inner,))
        return self.power(depth, chain)

    def power(self, depth, chain):
        base = self.atom(depth)
        if self.peek() == ("op", "^"):
            if chain >= self.limits.max_depth:
                raise ExpressionError(f"powers chained more than {self.limits.max_depth} deep")
            self.i += 1
            return self._binary("^", base, self.unary(depth, chain + 1))
        return base

    def atom(self, depth):
        kind, val = self.peek()
        if kind == "num":
            self.i += 1
            self.numbers.append(val)
            return Expression("num", self._bound(val))
        if kind == "(":
            if depth >= self.limits.max_depth:
                raise ExpressionError(f"parentheses nested deeper than {self.limits.max_depth}")
            self.i += 1
            node = self.expr(depth + 1)
            if self.peek()[0] != ")":
                raise ExpressionError("a '(' is not closed")
            self.i += 1
            return node
        if kind is None:
            raise ExpressionError("the expression ends where a number was expected")
        raise ExpressionError(f"{val!r} where a number was expected (no unary signs)")


def parse(text, limits=COUNTDOWN):
    """The :class:`Expression` tree of ``text`` (its ``value`` exact, ``numbers`` the literals in reading
    order), or :class:`ExpressionError` with the reason. Never anything else, whatever ``text`` is."""
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be an expression.Limits, got {type(limits).__name__}")
    if not isinstance(text, str):
        raise ExpressionError(f"not text ({type(text).__name__})")
    if len(text) > limits.max_chars:
        raise ExpressionError(f"longer than {limits.max_chars} characters ({len(text)})")
    toks = tokenize(text, limits)
    if not toks:
        raise ExpressionError("empty expression")
    p = _Parser(toks, limits)
    node = p.expr(0)
    if p.i != len(toks):
        raise ExpressionError(f"unexpected {p.toks[p.i][1]!r} after a complete expression")
    return replace(node, numbers=[int(x) if x.denominator == 1 else x for x in p.numbers])


def evaluate(text, limits=COUNTDOWN):
    """The exact value (a ``Fraction``) of ``text``; raises :class:`ExpressionError` (a ``ValueError``)."""
    return parse(text, limits).value


def format_value(v, max_decimals=6):
    """A Fraction as a person writes it: ``53``, ``-2.5``, ``0.333333`` (rounded to ``max_decimals``)."""
    if v.denominator == 1:
        return str(v.numerator)
    s = f"{float(v):.{max_decimals}f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"
