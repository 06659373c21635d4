"""L-BFGS with a strong-Wolfe line search on flat NumPy vectors (the engine of ``fit``'s fused path).

The algorithm and every constant are those of ``torch.optim.LBFGS(line_search_fn="strong_wolfe")``
(which ports Mark Schmidt's minFunc): the two-loop recursion over the last ``history_size`` curvature
pairs (a pair is kept only if ``y.s > 1e-10``), an initial step ``min(1, 1/|g|_1) * lr`` on the very
first iteration and ``lr`` after it, a bracketing phase that extrapolates by cubic interpolation within
``[t + 0.01 (t - t_prev), 10 t]``, and a zoom phase that bisects by safeguarded cubic interpolation
(Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithms 3.5 and 3.6, with ``c1 = 1e-4``,
``c2 = 0.9``). A ``step`` runs up to ``max_iter`` iterations and ``max_eval`` function evaluations
(the line search may use what is left of them),
and the state (direction, step, history) carries over from one ``step`` to the next, as in torch.

Why a second implementation: a KAN like ``[2, 5, 1]`` has a few hundred parameters, so every
iteration of torch's optimizer is dominated by the fixed cost of its ~50 small tensor operations
(clone, copy and add per parameter tensor, dot products that return tensors). On one flat float64
NumPy vector the same arithmetic costs a few microseconds per operation, which matters when one
training run makes thousands of evaluations (lesson 04's grid-extension staircase makes ~6,000).

``tests/test_fused.py`` checks that this optimizer and ``torch.optim.LBFGS`` take the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["LBFGS"]

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _cubic_min(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
               lo: float | None = None, hi: float | None = None) -> float:
    """Minimiser of the cubic through ``(x1, f1, f1')`` and ``(x2, f2, f2')``, clipped to ``[lo, hi]``
    (default: the interval between the points); the midpoint if the cubic has no minimiser."""
    if lo is None:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2
    d2 = math.sqrt(disc)
    if x1 <= x2:
        t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(t, lo), hi)


def strong_wolfe(fun: Objective, x: np.ndarray, t: float, d: np.ndarray, f: float, g: np.ndarray, gtd: float,
                 c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25):
    """Line search along ``d`` from ``x`` (value ``f``, gradient ``g``, slope ``gtd = g.d < 0``).

    Returns ``(f_new, g_new, t, evaluations)`` for a step ``t`` that satisfies the strong Wolfe
    conditions (or the best point found when the search runs out of evaluations or interval).
    """
    d_norm = float(np.abs(d).max())
    f_new, g_new = fun(x + t * d)
    evals = 1
    gtd_new = float(g_new @ d)
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    # bracketing: grow the step until the interval [t_prev, t] holds a point that satisfies the conditions
    while ls_iter < max_ls:
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bf, bg, bgtd = [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bf, bg, bgtd = [t], [f_new], [g_new], [gtd_new]
            done = True
            break
        if gtd_new >= 0:  # the slope turned: a minimiser lies in [t_prev, t]
            bracket = [t_prev, t]
            bf, bg, bgtd = [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        t_next = _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, t + 0.01 * (t - t_prev), t * 10)
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
        t = t_next
        f_new, g_new = fun(x + t * d)
        evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bf, bg, bgtd = [0.0, t], [f, f_new], [g, g_new], [gtd, gtd_new]

    # zoom: shrink the bracket [low, high] (low = the lower value) until the conditions hold
    insufficient = False
    low, high = (0, 1) if bf[0] <= bf[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_min(bracket[0], bf[0], bgtd[0], bracket[1], bf[1], bgtd[1])
        # keep the trial point away from the ends of the bracket (safeguard against slow progress)
        b_lo, b_hi = min(bracket), max(bracket)
        eps = 0.1 * (b_hi - b_lo)
        if min(b_hi - t, t - b_lo) < eps:
            if insufficient or t >= b_hi or t <= b_lo:
                t = b_hi - eps if abs(t - b_hi) < abs(t - b_lo) else b_lo + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = fun(x + t * d)
        evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1
        if f_new > f + c1 * t * gtd or f_new >= bf[low]:
            bracket[high], bf[high], bg[high], bgtd[high] = t, f_new, g_new, gtd_new
            low, high = (0, 1) if bf[0] <= bf[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bf[high], bg[high], bgtd[high] = bracket[low], bf[low], bg[low], bgtd[low]
            bracket[low], bf[low], bg[low], bgtd[low] = t, f_new, g_new, gtd_new
    return bf[low], bg[low], bracket[low], evals


class LBFGS:
    """Limited-memory BFGS on a flat float vector, the same algorithm as ``torch.optim.LBFGS`` with
    ``line_search_fn="strong_wolfe"``.

    Args:
        lr: initial step length of every iteration (the first iteration scales it by ``min(1, 1/|g|_1)``).
        max_iter: iterations per ``step``; ``max_eval`` function evaluations per ``step`` (default
            ``1.25 * max_iter``).
        tolerance_grad, tolerance_change: stop a step when ``max |g| <= tolerance_grad``, or when the
            step, its slope or the change of the loss falls below ``tolerance_change``.
        history_size: curvature pairs kept.

    ``step(fun, x)`` takes ``fun(x) -> (loss, gradient)`` (a float and an array shaped like ``x``; the
    array must be a fresh one, not a buffer reused by the next call) and the current point, and returns
    ``(x_new, loss_at_start, loss_new, gradient_new, evaluations)``.
    """

    def __init__(self, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.max_iter = float(lr), int(max_iter)
        self.max_eval = int(max_eval) if max_eval is not None else max_iter * 5 // 4
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        self.history_size = int(history_size)
        self.n_iter = 0  # iterations over all steps (the first one is special)
        self.func_evals = 0
        self.d: np.ndarray | None = None
        self.t: float | None = None
        # the curvature pairs, oldest first: rows of S (s_i = x_{i+1} - x_i) and Y (y_i = g_{i+1} - g_i),
        # ro_i = 1 / (y_i . s_i), and the products SY[i][j] = s_i . y_j (Python floats)
        self.S: np.ndarray | None = None
        self.Y: np.ndarray | None = None
        self.ro: list[float] = []
        self.SY: list[list[float]] = []
        self.H_diag = 1.0
        self.prev_grad: np.ndarray | None = None

    def _forget(self) -> None:
        self.S = self.Y = None
        self.ro, self.SY, self.H_diag = [], [], 1.0

    def _remember(self, s: np.ndarray, y: np.ndarray, ys: float) -> None:
        """Add the pair (s, y), dropping the oldest one beyond ``history_size``."""
        if self.S is None:
            self.S = np.empty((0, s.size), dtype=s.dtype)
            self.Y = np.empty((0, s.size), dtype=s.dtype)
        if len(self.ro) == self.history_size:
            self.S, self.Y = self.S[1:], self.Y[1:]
            self.ro.pop(0)
            self.SY = [row[1:] for row in self.SY[1:]]
        s_y = (self.Y @ s).tolist()  # s . y_j for the kept pairs j
        y_s = (self.S @ y).tolist()  # s_i . y for the kept pairs i
        for row, v in zip(self.SY, y_s):
            row.append(v)
        self.SY.append(s_y + [ys])
        self.S = np.vstack([self.S, s[None]])
        self.Y = np.vstack([self.Y, y[None]])
        self.ro.append(1.0 / ys)

    def _direction(self, g: np.ndarray) -> np.ndarray:
        """``-H g`` by the two-loop recursion over the stored pairs.

        The loops are the textbook ones (Nocedal & Wright, Algorithm 7.4), with every dot product of a
        stored vector and the running vector expanded into ``S @ g`` or ``Y @ r`` (one matrix-vector
        product each) plus scalar corrections from ``SY``: the same arithmetic in exact numbers, with
        four array operations per iteration instead of ~4 per stored pair.
        """
        m = len(self.ro)
        if m == 0:
            return -g * self.H_diag
        SY, ro = self.SY, self.ro
        sq = (-(self.S @ g)).tolist()  # s_i . q_0 with q_0 = -g
        al = [0.0] * m
        for i in range(m - 1, -1, -1):  # s_i . q_i = s_i . q_0 - sum_{j > i} al_j s_i . y_j
            row = SY[i]
            al[i] = ro[i] * (sq[i] - sum(al[j] * row[j] for j in range(i + 1, m)))
        r = (-g - np.asarray(al, dtype=g.dtype) @ self.Y) * self.H_diag
        yr = (self.Y @ r).tolist()
        c = [0.0] * m  # al_j - be_j
        for i in range(m):  # y_i . r_i = y_i . r_0 + sum_{j < i} c_j s_j . y_i
            be = ro[i] * (yr[i] + sum(c[j] * SY[j][i] for j in range(i)))
            c[i] = al[i] - be
        return r + np.asarray(c, dtype=g.dtype) @ self.S

    def step(self, fun: Objective, x: np.ndarray):
        loss, g = fun(x)
        orig_loss = loss
        evals = 1
        self.func_evals += 1
        if float(np.abs(g).max()) <= self.tolerance_grad:
            return x, orig_loss, loss, g, evals
        d, t = self.d, self.t
        it = 0
        while it < self.max_iter:
            it += 1
            self.n_iter += 1
            if self.n_iter == 1:
                d = -g
                self._forget()
            else:
                y = g - self.prev_grad
                s = d * t
                ys = float(y @ s)
                if ys > 1e-10:  # keep the pair only if it carries positive curvature
                    self._remember(s, y, ys)
                    self.H_diag = ys / float(y @ y)
                d = self._direction(g)
            self.prev_grad = g
            prev_loss = loss
            t = min(1.0, 1.0 / float(np.abs(g).sum())) * self.lr if self.n_iter == 1 else self.lr
            gtd = float(g @ d)
            if gtd > -self.tolerance_change:  # not a descent direction (or a negligible one)
                break
            loss, g, t, ls_evals = strong_wolfe(fun, x, t, d, loss, g, gtd, max_ls=self.max_eval - evals)
            x = x + t * d
            evals += ls_evals
            self.func_evals += ls_evals
            if it == self.max_iter or evals >= self.max_eval:
                break
            if float(np.abs(g).max()) <= self.tolerance_grad:
                break
            if float(np.abs(d * t).max()) <= self.tolerance_change or abs(loss - prev_loss) < self.tolerance_change:
                break
        self.d, self.t = d, t
        return x, orig_loss, loss, g, evals
