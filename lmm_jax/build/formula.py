"""lme4 model formulas: split the random-effects bars from the fixed part.

``y ~ x + (x | g) + (1 | a/b) + (0 + x || h)`` becomes

* the fixed part ``y ~ x`` (handed to formulaic: factors, interactions,
  ``C()``, ``I()``, transforms);
* a list of :class:`RandomTerm`, one per bar, with the nesting operator
  expanded as in lme4's ``findbars``/``expandSlash``: ``(1 | a/b)`` is
  ``(1 | a) + (1 | b:a)``; ``||`` marks a term whose columns are uncorrelated
  (split into one term per column once the columns are known).

Only the syntax is handled here; :mod:`lmm_jax.build.design` evaluates it on data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import FormulaError

_NAME = re.compile(r"^(?:[A-Za-z_.][A-Za-z0-9_.]*|`[^`]+`)$")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)``.

    Attributes:
        expr: the left of the bar, a formulaic right-hand side such as
            ``"1 + Days"`` or ``"0 + x"``.
        factors: the grouping variables whose interaction defines the levels
            (``("cask", "batch")`` for ``cask:batch``).
        uncorrelated: True for ``||``: each column gets its own term.
    """

    expr: str
    factors: tuple[str, ...]
    uncorrelated: bool = False

    @property
    def group(self) -> str:
        """The grouping factor's name as lme4 prints it (``cask:batch``)."""
        return ":".join(f.strip("`") for f in self.factors)

    def __str__(self) -> str:
        bar = "||" if self.uncorrelated else "|"
        return f"({self.expr} {bar} {self.group})"


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed lme4 formula.

    Attributes:
        text: the formula as given.
        response: the left of ``~``.
        fixed: the fixed part's right-hand side (formulaic syntax).
        random: the random-effects terms, in formula order.
        offsets: the expressions of the ``offset(expr)`` terms (lme4's: known
            parts of the linear predictor, summed, with no coefficient).
    """

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed}"


def _matching_paren(s: str, start: int, formula: str, offset: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise FormulaError("unbalanced parentheses: '(' is never closed; add the missing ')'",
                       formula, "(", offset + start)


def _split_top(s: str, sep: str) -> list[str]:
    """Split ``s`` at occurrences of ``sep`` at parenthesis depth 0."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[last:i])
            i += len(sep)
            last = i
            continue
        i += 1
    parts.append(s[last:])
    return parts


def _find_bar(s: str) -> tuple[int, int] | None:
    """Position and width of the first top-level ``|`` or ``||`` in s."""
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return (i, 2) if s.startswith("||", i) else (i, 1)
        i += 1
    return None


def _parse_group(group: str, formula: str, pos: int) -> list[tuple[str, ...]]:
    """``a/b/c`` -> [(a,), (b, a), (c, b, a)]; ``a:b`` -> [(a, b)]."""
    g = group.strip()
    if not g:
        raise FormulaError("random-effects term has no grouping factor after '|'; write e.g. (1 | subject)",
                           formula, "|", pos)
    nested = [p.strip() for p in _split_top(g, "/")]
    out: list[tuple[str, ...]] = []
    outer: tuple[str, ...] = ()
    for part in nested:
        factors = tuple(f.strip() for f in _split_top(part, ":"))
        for f in factors:
            if not _NAME.match(f):
                raise FormulaError(
                    f"grouping factor {f!r} is not a column name; grouping factors must be "
                    "plain column names (quote odd names with backticks), combined with ':' or '/'",
                    formula, f, formula.find(f) if f else pos)
        # lme4 names the inner factor first: (1 | batch/cask) -> cask:batch
        current = factors + outer
        out.append(current)
        outer = current
    return out


def _r_arithmetic(expr: str) -> str:
    """Inside a call (``I(...)``, ``sqrt(...)``, ...) R's ``^`` is a power;
    formulaic evaluates calls as Python, where ``^`` is bitwise XOR. Translate
    so ``I(x^2)`` and ``sqrt(x^3)`` mean x**2 and x**3 (outside calls ``^`` is
    the formula operator, ``(a + b)^2``, as in R)."""
    out, i = [], 0
    while i < len(expr):
        m = re.compile(r"(?<![\w.])[A-Za-z_][\w.]*\(").search(expr, i)
        if not m:
            out.append(expr[i:])
            break
        out.append(expr[i:m.end()])
        depth, j = 1, m.end()
        while j < len(expr) and depth:
            depth += (expr[j] == "(") - (expr[j] == ")")
            j += 1
        out.append(expr[m.end():j].replace("^", "**"))
        i = j
    return "".join(out)


_DOT = re.compile(r"(?<![A-Za-z0-9_.])\.(?![A-Za-z0-9_.])")   # R's '.', not part of a name or a number
_IN = re.compile(r"\s*%in%\s*")


def _outside_quotes(text: str):
    """(start, piece) for the pieces of text outside `...`, '...' and "..." quotes."""
    start = 0
    for m in re.finditer(r"`[^`]*`|'[^']*'|\"[^\"]*\"", text):
        yield start, text[start:m.start()]
        start = m.end()
    yield start, text[start:]


def _r_operators(text: str) -> str:
    """R's ``a %in% b`` is ``a:b`` (formulaic reads it as ``b/a``, another model)."""
    pieces, last = [], 0
    for start, piece in _outside_quotes(text):
        pieces.append(text[last:start])
        pieces.append(_IN.sub(":", piece))
        last = start + len(piece)
    return "".join(pieces) + text[last:]


def _reject_dot(text: str) -> None:
    for start, piece in _outside_quotes(text):
        m = _DOT.search(piece)
        if m:
            raise FormulaError("'.' (every other column) is not supported: name the fixed effects, e.g. "
                               "'y ~ x1 + x2 + (1 | g)' (lme4 would expand it to every column but the response, "
                               "grouping factors included)", text, ".", start + m.start())


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula.

    Args:
        formula: e.g. ``"Reaction ~ Days + (Days | Subject)"``.

    Returns:
        The :class:`ParsedFormula`.

    Raises:
        FormulaError: for a missing ``~``, unbalanced parentheses, a bar
            without a grouping factor or expression, or no random term.
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string like 'y ~ x + (1 | g)', got {type(formula).__name__}")
    text = formula
    if text.count("~") != 1:
        what = "has no '~'" if "~" not in text else "has more than one '~'"
        pos = text.find("~", text.find("~") + 1) if "~" in text else -1
        raise FormulaError(f"formula {what}; write it as 'response ~ predictors + (terms | group)'",
                           text, "~", pos)
    depth = 0
    for i, c in enumerate(text):
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            raise FormulaError("unbalanced parentheses: ')' without a matching '('; remove it or add '('",
                               text, ")", i)
    if depth > 0:
        raise FormulaError("unbalanced parentheses: '(' is never closed; add the missing ')'",
                           text, "(", text.rfind("("))
    _reject_dot(text)
    lhs, rhs = text.split("~")
    response = lhs.strip()
    if not response:
        raise FormulaError("formula has no response before '~'; write e.g. 'y ~ x + (1 | g)'", text, "~",
                           text.find("~"))
    if _find_bar(response) is not None or "|" in response:
        raise FormulaError("the response may not contain '|'", text, "|", text.find("|"))
    rhs_off = len(lhs) + 1
    if not rhs.strip():
        raise FormulaError("formula has nothing after '~'; write e.g. 'y ~ x + (1 | g)'", text, "~", text.find("~"))
    tail = rhs.rstrip()
    if tail.endswith(("+", "-", "*", ":", "/", "^", "%", "~")):
        raise FormulaError(f"formula ends in the operator {tail[-1]!r}; remove it or add a term after it", text,
                           tail[-1], rhs_off + len(tail) - 1)

    random: list[RandomTerm] = []
    fixed_pieces: list[str] = []
    i, last = 0, 0
    while i < len(rhs):
        if rhs[i] == "(":
            j = _matching_paren(rhs, i, text, rhs_off)
            inner = rhs[i + 1:j]
            bar = _find_bar(inner)
            if bar is not None:
                fixed_pieces.append(rhs[last:i])
                last = j + 1
                bpos, width = bar
                expr = inner[:bpos].strip()
                group = inner[bpos + width:]
                pos = rhs_off + i + 1 + bpos
                if not expr:
                    raise FormulaError("random-effects term has nothing before '|'; write (1 | g) for a "
                                       "random intercept", text, "|" * width, pos)
                if "|" in group:
                    raise FormulaError("random-effects term has more than one bar; use one '|' or '||' per "
                                       "parenthesised term", text, "|", pos + width + group.find("|"))
                for factors in _parse_group(group, text, pos):
                    random.append(RandomTerm(expr, factors, uncorrelated=(width == 2)))
            i = j + 1
            continue
        if rhs[i] == "|":
            raise FormulaError("'|' outside parentheses; random-effects terms are written (expr | group)",
                               text, "|", rhs_off + i)
        i += 1
    fixed_pieces.append(rhs[last:])
    fixed, offsets = _split_offsets("".join(fixed_pieces), text)
    fixed = re.sub(r"(\+\s*)+\+", "+", fixed)
    fixed = re.sub(r"^\s*\+|\+\s*$", "", fixed.strip()).strip()
    fixed = re.sub(r"^\s*\+", "", fixed).strip()
    if not fixed:
        fixed = "1"
    if fixed.endswith(("+", "-", "*", ":", "/")):
        raise FormulaError(f"fixed part ends in an operator: {fixed!r}; remove it or add a term", text,
                           fixed[-1], text.rfind(fixed[-1]))
    if not random:
        raise FormulaError("no random-effects terms in the formula; add one such as (1 | group) "
                           "(for a model without random effects use ordinary least squares)", text)
    fixed = _r_operators(_r_arithmetic(fixed))
    random = [RandomTerm(_r_operators(_r_arithmetic(t.expr)), t.factors, t.uncorrelated) for t in random]
    return ParsedFormula(text=text, response=_r_arithmetic(response), fixed=fixed, random=tuple(random),
                         offsets=offsets)


_OFFSET = re.compile(r"(?<![\w.`])offset\s*\(")


def _split_offsets(fixed: str, text: str) -> tuple[str, tuple[str, ...]]:
    """Take the ``offset(expr)`` terms out of the fixed part: (the rest, the expressions).

    An offset is a term of the sum: ``y ~ x + offset(log(t))``. Inside
    another term (``x:offset(t)``) or subtracted it has no meaning in R
    either, and is an error."""
    offsets, out, last = [], [], 0
    for m in _OFFSET.finditer(fixed):
        if m.start() < last:
            continue
        close = _matching_paren(fixed, m.end() - 1, text, text.find(fixed) if fixed in text else 0)
        expr = fixed[m.end():close].strip()
        before, after = fixed[last:m.start()].rstrip(), fixed[close + 1:].lstrip()
        if (before and not before.endswith("+")) or (after and not after.startswith("+")):
            raise FormulaError(f"offset({expr}) must be a term of its own in the sum (y ~ x + offset({expr}) + "
                               "(1 | g)); it cannot be subtracted or enter an interaction", text, "offset",
                               text.find("offset"))
        if not expr:
            raise FormulaError("offset() needs an expression, e.g. offset(log(exposure))", text, "offset",
                               text.find("offset"))
        offsets.append(expr)
        out.append(fixed[last:m.start()])
        last = close + 1
    out.append(fixed[last:])
    return "".join(out), tuple(offsets)
