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

    Example:
        >>> f = lmm_jax.parse_formula("Reaction ~ Days + (Days | Subject)")
        >>> f.response, f.fixed
        ('Reaction', 'Days')
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


def _signed_pieces(rhs: str, text: str, offset: int) -> list[tuple[str, str, int]]:
    """The top-level terms of a right-hand side with their signs: ``". - x +
    (1 | g)"`` -> [("+", ".", 0), ("-", "x", 4), ("+", "(1 | g)", 8)]."""
    out: list[tuple[str, str, int]] = []
    depth, sign, start = 0, "+", 0
    for i, c in enumerate(rhs + "+"):
        depth += (c == "(") - (c == ")")
        if depth == 0 and c in "+-" and (i == len(rhs) or not _exponent_sign(rhs, i)):
            piece = rhs[start:i].strip()
            if piece:
                out.append((sign, piece, offset + start + len(rhs[start:i]) - len(rhs[start:i].lstrip())))
            elif c == "-" and sign == "+":          # '- 1' at the start, 'x + -1'
                start = i + 1
                sign = "-"
                continue
            else:
                raise FormulaError("two operators in a row; write one '+' or '-' between terms", text, c, offset + i)
            sign, start = c, i + 1
    return out


def _exponent_sign(s: str, i: int) -> bool:
    """``s[i]`` is the sign of a number's exponent (``1e-3``)."""
    return i >= 2 and s[i - 1] in "eE" and s[i - 2].isdigit() and i + 1 < len(s) and s[i + 1].isdigit()


def _is_bar_term(piece: str) -> bool:
    if not piece.startswith("("):
        return False
    close = _matching_paren(piece, 0, piece, 0)
    return close == len(piece) - 1 and _find_bar(piece[1:-1]) is not None


def _fixed_terms(expr: str) -> list:
    """formulaic's terms of a fixed part (the intercept as the term ``1``)."""
    from formulaic import Formula           # on first use: parse_formula itself loads no heavy dependency

    return list(Formula(expr))


def _term_text(term) -> str:
    """A formulaic term written back as formula text: ``a:b``, ``I(x ** 2)``,
    a column name that is not a plain name in backticks."""
    parts = []
    for f in term.factors:
        plain = f.eval_method.value != "lookup" or _NAME.match(f.expr)
        parts.append(f.expr if plain else f"`{f.expr}`")
    return ":".join(parts)


def _random_key(t: RandomTerm) -> tuple:
    """What makes two random terms the same: the columns' terms (``(Days |
    g)`` is ``(1 + Days | g)``), the grouping factors and the bar."""
    return (frozenset(_fixed_terms(t.expr)), tuple(f.strip("`") for f in t.factors), t.uncorrelated)


def random_term_text(t: RandomTerm) -> str:
    """``(expr | a:b)`` as formula text (backticks kept)."""
    return f"({t.expr} {'||' if t.uncorrelated else '|'} {':'.join(t.factors)})"


def update_formula(old: ParsedFormula, new: str) -> str:
    """R's ``update.formula`` for lme4 formulas: ``new`` with ``.`` read as
    the old formula's parts, whole terms added with ``+`` and removed with ``-``.

    On the left of ``~``, ``.`` is the old response (``log(.) ~ .``); an
    empty left side keeps it (``~ . + x``). On the right, ``.`` is the old
    right-hand side: its fixed part, random terms and offsets. Then, term by
    term, left to right:

    * fixed terms follow R's (and formulaic's) term algebra: ``- x`` removes
      the term ``x``, ``- a:b`` an interaction (from ``a*b``, which is
      ``a + b + a:b``), ``- 1`` (or ``+ 0``) the intercept, ``+ 1`` restores it;
    * a random term ``(expr | g)`` is added, or removed where the formula has
      the same one: the same grouping factor and bar, and columns with the
      same terms (``(Days | g)`` and ``(1 + Days | g)`` are one term);
      ``(1 | a/b)`` stands for its two terms ``(1 | a)`` and ``(1 | b:a)``;
    * ``offset(expr)`` is added, or removed (R cannot remove one: its
      ``update`` keeps the offset).

    The fixed terms are written back in R's order (by degree, then as they
    come), so the text differs from R's in form, not in the model.

    Args:
        old: the fitted model's parsed formula.
        new: e.g. ``". ~ . - Days"``, ``". ~ . + (1 | h)"``, ``"log(.) ~ ."``.

    Returns:
        The new formula text.

    Raises:
        FormulaError: no ``~``, ``- .``, a term to remove that the formula
            does not have (R ignores it silently), or a piece that is not a
            whole term.
    """
    if not isinstance(new, str):
        raise FormulaError(f"the new formula must be a string like '. ~ . - x', got {type(new).__name__}")
    if new.count("~") != 1:
        raise FormulaError("the new formula needs one '~': write e.g. '. ~ . - x' ('.' is the old formula's side)",
                           new, "~", new.find("~", new.find("~") + 1) if "~" in new else -1)
    depth = 0
    for i, c in enumerate(new):
        depth += (c == "(") - (c == ")")
        if depth < 0:
            raise FormulaError("unbalanced parentheses: ')' without a matching '('", new, ")", i)
    if depth:
        raise FormulaError("unbalanced parentheses: '(' is never closed; add the missing ')'", new, "(",
                           new.rfind("("))
    lhs, rhs = new.split("~")
    lhs = lhs.strip() or "."
    response = "".join(piece if k % 2 else _DOT.sub(lambda _m: old.response, piece)
                       for k, piece in enumerate(re.split(r"(`[^`]*`)", lhs)))
    fixed: list[tuple[str, str]] = []
    random: list[RandomTerm] = []
    offsets: list[str] = []
    removals: list[tuple[str, int]] = []
    for sign, piece, pos in _signed_pieces(rhs, new, new.index("~") + 1):
        if piece == ".":
            if sign == "-":
                raise FormulaError("'- .' would remove the whole old right-hand side; write the new one instead",
                                   new, ".", pos)
            fixed.append(("+", old.fixed))
            random += [t for t in old.random if _random_key(t) not in {_random_key(r) for r in random}]
            offsets += [o for o in old.offsets if o not in offsets]
        elif _is_bar_term(piece):
            terms = parse_formula(f"y ~ {piece}").random
            if sign == "+":
                random += [t for t in terms if _random_key(t) not in {_random_key(r) for r in random}]
                continue
            for t in terms:
                kept = [r for r in random if _random_key(r) != _random_key(t)]
                if len(kept) == len(random):
                    raise FormulaError(f"cannot remove {random_term_text(t)}: the formula has no such random term "
                                       f"(its random terms: {', '.join(map(random_term_text, random)) or 'none'})",
                                       new, piece, pos)
                random = kept
        elif re.fullmatch(r"offset\s*\(.*\)", piece, flags=re.S) and _matching_paren(
                piece, piece.index("("), new, pos) == len(piece) - 1:
            expr = piece[piece.index("(") + 1:-1].strip()
            if sign == "+":
                offsets += [expr] if expr not in offsets else []
            elif expr in offsets:
                offsets.remove(expr)
            else:
                raise FormulaError(f"cannot remove offset({expr}): the formula has no such offset (its offsets: "
                                   f"{[f'offset({o})' for o in offsets] or 'none'})", new, piece, pos)
        else:
            if "|" in piece:
                raise FormulaError("a random-effects term must be one parenthesised term, (expr | group)", new,
                                   "|", pos + piece.find("|"))
            _reject_dot(piece)
            piece = _r_operators(_r_arithmetic(piece))
            fixed.append((sign, piece))
            if sign == "-" and piece not in ("1", "0"):
                removals.append((piece, pos))
    fixed_text = " ".join(f"{sign} {piece}" for sign, piece in fixed).lstrip("+ ") or "1"
    if fixed_text.startswith("- "):
        fixed_text = "-" + fixed_text[2:]
    try:
        terms = _fixed_terms(fixed_text)
        present = set(_fixed_terms(" + ".join(p for s, p in fixed if s == "+") or "1"))
        for piece, pos in removals:
            absent = [t for t in _fixed_terms(f"0 + {piece}") if t not in present]
            if absent:
                names = [_term_text(t) for t in present if str(t) != "1"]
                raise FormulaError(f"cannot remove {piece!r}: {', '.join(map(_term_text, absent))} is not a fixed-"
                                   f"effect term of the formula (its terms: {names or 'none'})", new, piece, pos)
    except FormulaError:
        raise
    except Exception as e:      # formulaic's own parse errors
        raise FormulaError(f"cannot read the fixed part {fixed_text!r}: {e}", new, rhs.strip(),
                           new.index("~") + 1) from None
    intercept = any(str(t) == "1" for t in terms)
    names = [_term_text(t) for t in terms if str(t) != "1"]
    fixed_out = " + ".join(names) if intercept else " + ".join(["0"] + names)
    parts = [fixed_out or "1"] + [random_term_text(t) for t in random] + [f"offset({o})" for o in offsets]
    return f"{response} ~ {' + '.join(parts)}"
