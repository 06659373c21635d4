"""L-BFGS with a strong-Wolfe line search on one flat vector: ``fit``'s optimizer for ``opt="LBFGS"``.

The algorithm and its constants are those of ``torch.optim.LBFGS(line_search_fn="strong_wolfe")``
(which ports Mark Schmidt's minFunc), with one difference: a curvature pair ``(s, y)`` is kept when
``y.s > tolerance_ys`` with ``tolerance_ys = 1e-32`` by default (pykan's vendored L-BFGS does the same),
where torch hard-codes ``1e-10``. Near a good fit the loss, its gradient differences and therefore
``y.s`` are tiny: on the KAN paper's grid-extension protocol ``y.s`` falls below ``1e-10`` from
``G = 10`` on, torch drops every pair, and L-BFGS degrades to scaled gradient steps (the test RMSE of
``[2, 1, 1]`` then stalls near ``1e-4`` from ``G = 20`` to ``50``). ``y.s > 0`` is what the method needs
(it keeps the inverse-Hessian estimate positive definite); the tiny positive threshold only guards
against rounding. Two more departures from torch, both for the same regime: the line search zooms down to
the optimizer's ``tolerance_change`` (torch: a hard-coded 1e-9), and a step whose stored pairs give no
descent direction restarts from steepest descent (torch ends the step, and stalls). The rest is torch's:
the inverse-Hessian estimate of the last ``history_size`` pairs, an initial step ``min(1, 1/|g|_1) * lr``
on the very first iteration and ``lr`` after it, a bracketing phase that extrapolates by cubic
interpolation within ``[t + 0.01 (t - t_prev), 10 t]``, and a zoom phase that bisects by safeguarded cubic
interpolation (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithms 3.5 and 3.6, with
``c1 = 1e-4``, ``c2 = 0.9``). A ``step`` runs up to ``max_iter`` iterations and ``max_eval`` function
evaluations (the line search may use what is left of them), and the state (direction, step, history)
carries over from one ``step`` to the next, as in torch.

Why our own implementation: torch's constants cannot be changed, and a KAN like ``[2, 5, 1]`` has a few
hundred parameters, so every iteration of torch's optimizer is dominated by the fixed cost of its ~50
small tensor operations (clone, copy and add per parameter tensor, dot products that return tensors).
On one flat float64 NumPy vector the same arithmetic costs a few microseconds per operation, which
matters when one training run makes thousands of evaluations (lesson 04's grid-extension staircase makes ~6,000).

The vectors may be NumPy arrays (the fused engine) or torch tensors on any device (``TorchLBFGS``, the
``torch.optim.Optimizer`` that ``fit`` uses for every other model). ``tests/test_fused.py`` checks that
this optimizer and ``torch.optim.LBFGS`` take the same steps where the threshold does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import solve_triangular

__all__ = ["LBFGS", "TorchLBFGS", "TOLERANCE_YS"]

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]
#: keep a curvature pair when y.s exceeds this (pykan's value; torch.optim.LBFGS hard-codes 1e-10)
TOLERANCE_YS = 1e-32


def _absmax(v) -> float:
    return float(abs(v).max())


def _abssum(v) -> float:
    return float(abs(v).sum())


def _stack_row(rows, v):
    """``rows [m, n]`` with ``v [n]`` appended (NumPy or torch); ``rows`` None starts a new stack."""
    if isinstance(v, torch.Tensor):
        return v[None].clone() if rows is None else torch.cat([rows, v[None]])
    return v[None].copy() if rows is None else np.vstack([rows, v[None]])


def _vector(values: np.ndarray, like):
    """``values`` (a small NumPy vector) as a 1-D array of ``like``'s kind, dtype and device."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return np.asarray(values, dtype=like.dtype)


def _host(v) -> np.ndarray:
    """A small vector (a product with the stored pairs) as float64 NumPy, for the small-matrix algebra."""
    if isinstance(v, torch.Tensor):
        return v.detach().to("cpu", torch.float64).numpy()
    return np.asarray(v, dtype=np.float64)


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
    d_norm = _absmax(d)
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
        tolerance_ys: keep a pair ``(s, y)`` only when ``y.s`` exceeds this (see the module docstring).
        line_search_tolerance: the line search stops zooming when its bracket times ``max |d|`` is below
            this (default ``tolerance_change``; torch hard-codes 1e-9, which stalls fits near RMSE 1e-10).
        restart: when the stored pairs yield a direction that is not a descent direction, forget them and
            take a steepest-descent step instead of ending the step (torch ends it, and stalls there for
            good); ``restarts`` counts how often that happened. ``False`` behaves like torch.

    ``step(fun, x)`` takes ``fun(x) -> (loss, gradient)`` (a float and an array shaped like ``x``, NumPy
    or torch; the array must be a fresh one, not a buffer reused by the next call) and the current point
    ``x [n]``, and returns ``(x_new, loss_at_start, loss_new, gradient_new, evaluations)``.
    """

    def __init__(self, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 tolerance_ys: float = TOLERANCE_YS, line_search_tolerance: float | None = None,
                 restart: bool = True):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not tolerance_ys >= 0:
            raise ValueError(f"tolerance_ys must be >= 0, got {tolerance_ys}")
        self.tolerance_ys = float(tolerance_ys)
        self.restart, self.restarts = bool(restart), 0
        self.line_search_tolerance = tolerance_change if line_search_tolerance is None else float(line_search_tolerance)
        self.lr, self.max_iter = float(lr), int(max_iter)
        self.max_eval = int(max_eval) if max_eval is not None else max_iter * 5 // 4
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        self.history_size = int(history_size)
        self.n_iter = 0  # iterations over all steps (the first one is special)
        self.func_evals = 0
        self.d: np.ndarray | None = None
        self.t: float | None = None
        # the curvature pairs, oldest first: rows of S (s_i = x_{i+1} - x_i) and Y (y_i = g_{i+1} - g_i), and
        # their small products SY[i, j] = s_i . y_j and YY[i, j] = y_i . y_j (float64 NumPy, [m, m])
        self.S: np.ndarray | None = None
        self.Y: np.ndarray | None = None
        self.SY = np.zeros((0, 0))
        self.YY = np.zeros((0, 0))
        self.H_diag = 1.0
        self.prev_grad: np.ndarray | None = None

    def forget(self) -> None:
        """Drop the stored curvature pairs (``fit`` calls this after a grid update, which changes the loss
        under them); the next iteration takes a steepest-descent step. Counters and the last step are kept."""
        self._forget()

    def _forget(self) -> None:
        self.S = self.Y = None
        self.SY, self.YY, self.H_diag = np.zeros((0, 0)), np.zeros((0, 0)), 1.0

    @property
    def pairs(self) -> int:
        """The number of curvature pairs stored."""
        return len(self.SY)

    def _remember(self, s: np.ndarray, y: np.ndarray, ys: float) -> None:
        """Add the pair (s, y), dropping the oldest one beyond ``history_size``."""
        if self.S is not None and self.pairs == self.history_size:
            self.S, self.Y = self.S[1:], self.Y[1:]
            self.SY, self.YY = self.SY[1:, 1:], self.YY[1:, 1:]
        m = self.pairs
        SY, YY = np.empty((m + 1, m + 1)), np.empty((m + 1, m + 1))
        SY[:m, :m], YY[:m, :m] = self.SY, self.YY
        if m:
            SY[:m, m] = _host(self.S @ y)  # s_i . y
            SY[m, :m] = _host(self.Y @ s)  # s . y_j
            YY[:m, m] = YY[m, :m] = _host(self.Y @ y)
        SY[m, m], YY[m, m] = ys, float(y @ y)
        self.SY, self.YY = SY, YY
        self.S = _stack_row(self.S, s)
        self.Y = _stack_row(self.Y, y)

    def _direction(self, g: np.ndarray) -> np.ndarray:
        """``-H g`` for the L-BFGS inverse-Hessian estimate ``H`` of the stored pairs.

        ``H`` is the matrix of the textbook two-loop recursion (Nocedal & Wright, Algorithm 7.4), written in
        the compact form of Byrd, Nocedal & Schnabel (1994, eq. 2.6): with ``R`` the upper triangle of
        ``SY``, ``D`` its diagonal and ``gamma = H_diag``,

            H g = gamma g + S^T R^{-T} ((D + gamma YY) u - gamma Y g) - gamma Y^T u,   u = R^{-1} S g,

        that is, two products with the stored vectors each way and two small triangular solves: a few
        array operations whatever the history size (the two-loop recursion needs ~4 per stored pair).
        """
        m = self.pairs
        if m == 0:
            return -g * self.H_diag
        gamma = self.H_diag
        R = np.triu(self.SY)
        u = solve_triangular(R, _host(self.S @ g), lower=False, check_finite=False)
        w = np.diag(self.SY) * u + gamma * (self.YY @ u) - gamma * _host(self.Y @ g)
        p = solve_triangular(R, w, lower=False, trans="T", check_finite=False)
        return -(gamma * g + _vector(p, g) @ self.S - gamma * (_vector(u, g) @ self.Y))

    def step(self, fun: Objective, x: np.ndarray):
        loss, g = fun(x)
        orig_loss = loss
        evals = 1
        self.func_evals += 1
        if _absmax(g) <= self.tolerance_grad:
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
                if ys > self.tolerance_ys:  # keep the pair only if it carries positive curvature
                    self._remember(s, y, ys)
                    self.H_diag = ys / float(y @ y)
                d = self._direction(g)
            self.prev_grad = g
            prev_loss = loss
            t = min(1.0, 1.0 / _abssum(g)) * self.lr if self.n_iter == 1 else self.lr
            gtd = float(g @ d)
            if gtd > -self.tolerance_change and self.S is not None and self.restart:
                # The stored pairs no longer give a descent direction (near a minimum their y.s are at
                # rounding level, or a grid update changed the loss under them). torch breaks here, and
                # since the next step rebuilds the same direction from the same pairs, training stalls
                # for good. Forget them and take a steepest-descent step, as at the first iteration.
                self._forget()
                self.restarts += 1
                d = -g
                t = min(1.0, 1.0 / _abssum(g)) * self.lr
                gtd = float(g @ d)
            if gtd > -self.tolerance_change:  # not a descent direction (or a negligible one)
                break
            # torch's line search ends its zoom once the bracket times max|d| is below a hard-coded 1e-9;
            # near a good fit the steps are that small, the search returns t = 0, and LBFGS stalls (a
            # symbolic model stopped at RMSE 4e-11). Here it defaults to the optimizer's tolerance_change.
            loss, g, t, ls_evals = strong_wolfe(fun, x, t, d, loss, g, gtd, tolerance_change=self.line_search_tolerance,
                                                max_ls=self.max_eval - evals)
            x = x + t * d
            evals += ls_evals
            self.func_evals += ls_evals
            if it == self.max_iter or evals >= self.max_eval:
                break
            if _absmax(g) <= self.tolerance_grad:
                break
            if _absmax(d * t) <= self.tolerance_change or abs(loss - prev_loss) < self.tolerance_change:
                break
        self.d, self.t = d, t
        return x, orig_loss, loss, g, evals


class TorchLBFGS(torch.optim.Optimizer):
    """:class:`LBFGS` as a ``torch.optim.Optimizer``: a drop-in for ``torch.optim.LBFGS(...,
    line_search_fn="strong_wolfe")`` with a settable ``tolerance_ys``.

    ``step(closure)``: the closure clears the gradients, computes the loss, calls ``backward()`` and
    returns the loss (as for torch's LBFGS); the parameters (those with ``requires_grad``, on any one
    device) are read into one flat vector, optimised, and written back. Returns the loss at the start of
    the step. Parameters without a gradient count as having a zero one.
    """

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 tolerance_ys: float = TOLERANCE_YS):
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size, tolerance_ys=tolerance_ys)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("TorchLBFGS takes one parameter group (as torch.optim.LBFGS does)")
        self.core = LBFGS(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                          tolerance_change=tolerance_change, history_size=history_size, tolerance_ys=tolerance_ys)

    def forget(self) -> None:
        """See :meth:`LBFGS.forget`."""
        self.core.forget()

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.param_groups[0]["params"] if p.requires_grad]

    @torch.no_grad()
    def _write(self, params, v) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(v[offset:offset + n].view_as(p))
            offset += n

    def step(self, closure):  # noqa: D102 - documented on the class
        if closure is None:
            raise ValueError("TorchLBFGS.step needs a closure that computes the loss and its gradient")
        self.core.lr = float(self.param_groups[0]["lr"])
        params = self._params()

        def fun(v):
            self._write(params, v)
            with torch.enable_grad():
                loss = closure()
            grads = [torch.zeros_like(p).view(-1) if p.grad is None else p.grad.reshape(-1) for p in params]
            return float(loss.detach() if isinstance(loss, torch.Tensor) else loss), torch.cat(grads).clone()

        with torch.no_grad():
            x0 = torch.cat([p.detach().reshape(-1) for p in params])
        x, orig_loss, _, _, _ = self.core.step(fun, x0)
        self._write(params, x)
        return torch.tensor(orig_loss)
