"""Reference answers for the exercise parts that the rest of kanedu does not already compute.

Where kanedu holds the answer (``kanedu.splines.bspline_basis``, ``KANLayer``, ``matched_mlp``, ...), the
judges call kanedu itself; this module holds the rest. Every function here is switched off while a
student's answer runs (:data:`kanedu.grading.parts.ANSWERS_MODULE`), so importing it does not help.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from kanedu.splines import bspline_basis

__all__ = [
    "ka_counts", "ka_network", "koppen_psi", "support_mask", "expanded_features", "overfit_grid", "train_adam",
    "sparsity_penalty", "fit_cd", "symbolic_score", "edge_scores", "average_forgetting", "causal_attention_weights",
    "bits_per_char", "top_k_probs",
]


# ---- exercise 01: the Kolmogorov-Arnold theorem ----------------------------------------------------

def ka_counts(n: int) -> tuple[int, int]:
    """(outer, inner) functions of the representation of f: R^n -> R: (2n + 1, n (2n + 1))."""
    return 2 * n + 1, n * (2 * n + 1)


def ka_network(inner, outer):
    """f(x_1..x_n) = sum_q outer[q]( sum_p inner[q][p](x_p) )."""
    def f(*xs):
        return sum(Phi(sum(phi(x) for phi, x in zip(row, xs))) for Phi, row in zip(outer, inner))
    return f


def koppen_psi(m: int, k: int, gamma: int = 6, n: int = 2) -> Fraction:
    """Köppen's inner function at the level-k point m / gamma^k, exactly (Braun & Griebel 2009).

    psi_1(d) = d; for k > 1 with last digit i_k: psi_{k-1}(d - i_k gamma^-k) + i_k gamma^-beta(k) if
    i_k < gamma - 1, else (psi_k(d - gamma^-k) + psi_{k-1}(d + gamma^-k)) / 2, beta(k) = (n^k - 1)/(n - 1).
    """
    memo: dict[tuple[int, int], Fraction] = {}

    def psi(m: int, k: int) -> Fraction:
        if (m, k) not in memo:
            if k == 1:
                memo[m, k] = Fraction(m, gamma)
            else:
                head, digit = divmod(m, gamma)
                if digit < gamma - 1:
                    memo[m, k] = psi(head, k - 1) + Fraction(digit, gamma ** ((n**k - 1) // (n - 1)))
                else:
                    memo[m, k] = (psi(m - 1, k) + psi(head + 1, k - 1)) / 2
        return memo[m, k]

    return psi(m, k)


# ---- exercise 02: B-splines --------------------------------------------------------------------------

def support_mask(x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """[N, m - k - 1]: True where t_i <= x < t_{i+k+1} (the support of B_{i,k})."""
    return (t[: -k - 1] <= x[:, None]) & (x[:, None] < t[k + 1:])


# ---- exercise 03: a KAN layer from scratch ----------------------------------------------------------

def expanded_features(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Phi(x) [N, in * (G + k + 1)]: per input, silu(x_i) then its G + k B-splines."""
    slots = torch.cat([F.silu(x)[..., None], bspline_basis(x, grid, k)], dim=-1)
    return slots.reshape(x.shape[0], -1)


# ---- exercise 04: training and grid extension -----------------------------------------------------

def overfit_grid(widths, k: int, n_train: int) -> int:
    """The smallest G >= 1 at which KAN(widths, G, k) has more parameters than n_train
    (sum over layers of n_in n_out (G + k + 2))."""
    edges = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return max(1, n_train // edges - k - 2 + 1)


def train_adam(model, dataset, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the MSE of ``model(train_input)`` against ``train_label``; the loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = dataset["train_input"], dataset["train_label"]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- exercise 05: interpretability ----------------------------------------------------------------

def sparsity_penalty(phi: torch.Tensor, x: torch.Tensor, mu: float = 2.0) -> torch.Tensor:
    """pykan's penalty of one layer: s = std phi / (std x + 0.1); sum s + mu (H_rows + H_cols)."""
    s = phi.std(0) / (x.std(0) + 0.1)  # [out, in]
    p_row = s / (s.sum(1, keepdim=True) + 1)
    p_col = s / (s.sum(0, keepdim=True) + 1)
    h_row = -(p_row * torch.log2(p_row + 1e-4)).sum(1).mean()
    h_col = -(p_col * torch.log2(p_col + 1e-4)).sum(0).mean()
    return s.sum() + mu * (h_row + h_col)


def fit_cd(x: torch.Tensor, y: torch.Tensor, f, a: float, b: float):
    """(c, d, r2): least squares of y ~ c f(a x + b) + d, and R^2 = 1 - SS_res / SS_tot."""
    u = f(a * x + b)
    um, ym = u.mean(), y.mean()
    c = ((u - um) * (y - ym)).sum() / (u - um).pow(2).sum()
    d = ym - c * um
    r2 = 1 - (y - c * u - d).pow(2).sum() / (y - ym).pow(2).sum()
    return c.item(), d.item(), r2.item()


def symbolic_score(r2: float, complexity: float, cap: float = 6.0) -> float:
    """min(-log10(1 - R^2), cap) - complexity, with R^2 >= 1 counted as cap and R^2 <= 0 as 0."""
    quality = cap if r2 >= 1 else max(0.0, min(-math.log10(1 - r2), cap))
    return quality - complexity


def edge_scores(phi: torch.Tensor, node_scores: torch.Tensor) -> torch.Tensor:
    """[out, in]: std_n phi_ji / (std_n sum_i phi_ji + 1e-4) * score_j, pykan's attribution of one layer."""
    return phi.std(0) * (node_scores / (phi.sum(-1).std(0) + 1e-4)).unsqueeze(1)


# ---- exercise 07: classification, noise and forgetting ----------------------------------------------

def average_forgetting(acc: torch.Tensor) -> float:
    """Average forgetting of an accuracy matrix ``acc [T, T]`` (``acc[p, q]``: accuracy on task q after
    training task p): the mean over tasks ``q < T-1`` of ``max_{q <= p <= T-2} acc[p, q] - acc[T-1, q]``."""
    T = acc.shape[0]
    return sum((acc[q:T - 1, q].max() - acc[T - 1, q]).item() for q in range(T - 1)) / (T - 1)


# ---- exercise 10: KAN sequence models II: transformers ----------------------------------------------

def causal_attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[..., T, T]: softmax over s <= t of q_t . k_s / sqrt(d), zero for s > t (q, k [..., T, d])."""
    T, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean -log2 p(target) under softmax(logits): logits [N, V], targets [N] (long)."""
    return (F.cross_entropy(logits, targets) / math.log(2)).item()


def top_k_probs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """[B, V]: softmax(logits / temperature) over the top_k largest logits of each row (all if None), 0 elsewhere."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)
