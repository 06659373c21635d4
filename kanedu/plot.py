"""Pictures of B-spline bases, KAN edges, whole networks and training runs (matplotlib).

Every function draws into ``ax`` (a new figure when ``ax`` is None), returns the Axes, labels axes and
sets a title, and writes a file only when ``save=path`` is given.

* :func:`plot_basis`: the B-spline bases of one grid, knots marked (lesson 02);
* :func:`plot_activation`: one edge ``phi_ij`` with its residual and spline parts and its knots (lesson 03);
* :func:`plot_network`: the pykan-style diagram, every edge drawn as its learned curve (lessons 03-05);
* :func:`plot_ka_network`: a hand-built two-level Kolmogorov-Arnold network of given functions (lesson 01);
* :func:`plot_history`, :func:`plot_fit_1d`: training curves and 1-D fits (lesson 04);
* :func:`plot_staircase`: the train/test curves of a grid-extension run, stage after stage (lesson 04);
* :func:`plot_edges_vs_ideal`: the edges of a ``[n, 1, 1]`` KAN against the ideal ``F(sum_i g_i(x_i))``
  (lesson 04).

``plot_network`` draws all curves, edges and frames as three ``LineCollection`` objects in one Axes
(data coordinates), not one Axes per edge, so a [4, 5, 5, 1] KAN takes a fraction of a second.
"""

from __future__ import annotations

import math

import torch

from .layers import KANLayer
from .splines import bspline_basis, uniform_grid

__all__ = ["plot_basis", "plot_activation", "plot_network", "plot_history", "plot_fit_1d", "plot_staircase",
           "plot_ka_network", "plot_edges_vs_ideal"]

NUMERIC_COLOR = (0.0, 0.0, 0.0)
SYMBOLIC_COLOR = (0.80, 0.10, 0.10)


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _save(ax, save):
    if save is not None:
        ax.figure.savefig(save, bbox_inches="tight", dpi=150)
    return ax


def _check_layer(layer):
    if not isinstance(layer, KANLayer):
        hint = " (for a KAN use model.layers[l])" if hasattr(layer, "layers") else ""
        raise TypeError(f"layer must be a kanedu.KANLayer, got {type(layer).__name__}{hint}")
    return layer


def _check_model(model):
    # a KAN is a module with KAN layers and the widths of its levels (plot is imported by kanedu.models, so
    # it recognises a KAN by what it has rather than importing the class)
    layers = getattr(model, "layers", None)
    if not (hasattr(model, "widths") and hasattr(model, "attribution") and layers is not None
            and all(isinstance(layer, KANLayer) for layer in layers)):
        raise TypeError(f"model must be a kanedu.KAN, got {type(model).__name__}")
    return model


# --------------------------------------------------------------------------------------------------
# bases and single edges
# --------------------------------------------------------------------------------------------------


def plot_basis(grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0), ax=None, n: int = 400,
               save=None):
    """The ``G + k`` B-spline bases of order ``k`` on the extended uniform grid, knots marked.

    The shaded band is ``grid_range``, where the bases sum to 1 (partition of unity); outside it only the
    extension knots carry them down to 0.
    """
    grid = uniform_grid(grid_size, spline_order, grid_range, dtype=torch.float64, device="cpu")
    x = torch.linspace(float(grid[0]), float(grid[-1]), n, dtype=torch.float64, device="cpu")
    B = bspline_basis(x, grid, spline_order, method="reference")  # [n, G + k]
    ax = _axes(ax, (6.4, 3.2))
    ax.axvspan(*grid_range, color="0.93", zorder=0, label="grid range")
    for m in range(B.shape[1]):
        ax.plot(x.numpy(), B[:, m].numpy(), lw=1.5, label=f"_basis {m}")  # "_": not in the legend
    for t in grid.tolist():
        ax.axvline(t, color="0.6", lw=0.6, ls=":", zorder=0, label="_knot")
    ax.plot(grid.numpy(), torch.zeros_like(grid).numpy(), "k|", ms=10, label="knots")
    ax.plot(x.numpy(), B.sum(1).numpy(), "k--", lw=1, label="sum of bases")
    ax.set_xlabel("x")
    ax.set_ylabel("$B_m(x)$")
    ax.set_title(f"B-spline bases: G = {grid_size} intervals, order k = {spline_order} "
                 f"({B.shape[1]} functions)")
    ax.legend(loc="upper right", fontsize="small")
    return _save(ax, save)


@torch.no_grad()
def plot_activation(layer, i: int, j: int, x: torch.Tensor | None = None, ax=None, n: int = 300, save=None):
    """Edge ``i -> j`` of a :class:`~kanedu.KANLayer`: ``phi_ij = w_b b(x) + w_s spline(x)`` and both parts.

    Drawn over the range of the layer inputs ``x [N, in]`` (whose samples are shown too), or over the
    spline's grid range; the knots of feature ``i`` are marked on the x axis. A symbolic edge
    (``kanedu.symbolic.fix_symbolic``) is drawn as its formula.
    """
    layer = _check_layer(layer)
    if not (isinstance(i, int) and 0 <= i < layer.in_features and isinstance(j, int) and 0 <= j < layer.out_features):
        raise ValueError(f"(i, j) must index an edge of a {layer.in_features} -> {layer.out_features} layer, "
                         f"got ({i!r}, {j!r})")
    k, G = layer.spline_order, layer.grid_size
    dtype, dev = layer.coef.dtype, layer.coef.device
    if x is not None:
        if x.dim() != 2 or x.shape[1] != layer.in_features:
            raise ValueError(f"x must be layer inputs [N, {layer.in_features}], got shape {tuple(x.shape)}")
        lo, hi = float(x[:, i].min()), float(x[:, i].max())
    else:
        lo, hi = float(layer.grid[i, k]), float(layer.grid[i, k + G])
    H = torch.zeros(n, layer.in_features, dtype=dtype, device=dev)
    u = torch.linspace(lo, hi, n, dtype=dtype, device=dev)
    H[:, i] = u
    phi = layer.edge_activations(H)[:, j, i]
    m = layer.mask[i, j]
    base = m * layer.scale_base[i, j] * layer._base(u)
    spline = m * layer.scale_spline[i, j] * layer.spline_values(H)[:, i, j]
    ax = _axes(ax, (5.0, 3.4))
    sym = getattr(layer, "symbolic", None)
    if sym is not None and (i, j) in sym.functions:
        a, b, c, d = (float(v) for v in sym.params[i, j])
        label = f"symbolic: {c:.3g} {sym.functions[(i, j)].name}({a:.3g} x + {b:.3g}) + {d:.3g}"
        ax.plot(u.cpu().numpy(), phi.cpu().numpy(), color=SYMBOLIC_COLOR, lw=2, label=label)
    else:
        ax.plot(u.cpu().numpy(), phi.cpu().numpy(), "k", lw=2, label=r"$\phi_{ij}(x)$")
        ax.plot(u.cpu().numpy(), base.cpu().numpy(), "--", lw=1.2, label=f"residual $w_b\\,${layer.base_activation}(x)")
        ax.plot(u.cpu().numpy(), spline.cpu().numpy(), ":", lw=1.5, label=r"spline $w_s \sum_m c_m B_m(x)$")
    if x is not None:
        xi = x[:, i].to(dtype)
        X = torch.zeros(len(xi), layer.in_features, dtype=dtype, device=dev)
        X[:, i] = xi
        ax.plot(xi.cpu().numpy(), layer.edge_activations(X)[:, j, i].cpu().numpy(), ".", ms=2, color="0.5",
                label="at the samples")
    knots = layer.grid[i].cpu()
    knots = knots[(knots >= lo - 1e-12) & (knots <= hi + 1e-12)]
    ymin = ax.get_ylim()[0]
    ax.plot(knots.numpy(), [ymin] * len(knots), "|", color="tab:blue", ms=12, mew=1.5, label="knots",
            clip_on=False)
    ax.set_xlabel(f"input $x_{{{i}}}$")
    ax.set_ylabel(rf"$\phi_{{{i},{j}}}(x)$")
    ax.set_title(f"edge {i} -> {j}")
    ax.legend(fontsize="x-small", loc="best")
    return _save(ax, save)


# --------------------------------------------------------------------------------------------------
# the whole network
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _edge_curves(model, x, n: int):
    """Per layer: ``(u [n, in], phi [n, out, in])`` swept over each input's range, and the active edges."""
    xs = model.layer_inputs(x) if x is not None else None
    out = []
    for l, layer in enumerate(model.layers):
        k, G = layer.spline_order, layer.grid_size
        if xs is not None:
            lo, hi = xs[l].amin(0), xs[l].amax(0)
        else:
            lo, hi = layer.grid[:, k], layer.grid[:, k + G]
        steps = torch.linspace(0, 1, n, dtype=layer.coef.dtype, device=layer.coef.device)
        u = lo + (hi - lo) * steps[:, None]  # [n, in]
        out.append((u, layer.edge_activations(u)))
    return out


@torch.no_grad()
def plot_network(model, x: torch.Tensor | None = None, in_vars=None, out_vars=None, ax=None, beta: float = 3.0,
                 n: int = 48, title: str | None = None, save=None):
    """A KAN as a diagram: nodes in rows (inputs at the bottom), every edge a line through a small box
    that shows its learned curve ``phi_ij``.

    Args:
        model: a :class:`~kanedu.KAN`.
        x: model inputs ``[N, in]``: each curve is drawn over the range of its edge's inputs on these
            samples, and edge opacity is ``tanh(beta * score)`` with the attribution scores of
            :meth:`KAN.attribution`. Without ``x``: grid ranges and full opacity.
        in_vars, out_vars: labels of the inputs and outputs (default ``x1..`` and ``y1..``).
        n: points per curve.

    Masked (pruned) edges are not drawn; symbolic edges are red and labelled with their function;
    multiplication nodes are drawn as a cross in a circle.
    Each curve is scaled to fill its box (the box shows the shape; the opacity shows the importance).
    """
    from matplotlib.collections import LineCollection

    model = _check_model(model)
    widths, L = model.widths, len(model.layers)
    in_vars = [f"$x_{{{i + 1}}}$" for i in range(widths[0])] if in_vars is None else list(in_vars)
    out_vars = [f"$y_{{{j + 1}}}$" for j in range(widths[-1])] if out_vars is None else list(out_vars)
    if len(in_vars) != widths[0] or len(out_vars) != widths[-1]:
        raise ValueError(f"in_vars/out_vars need {widths[0]} and {widths[-1]} labels, got {len(in_vars)} and "
                         f"{len(out_vars)}")
    if x is not None and (x.dim() != 2 or x.shape[1] != widths[0]):
        raise ValueError(f"x must be model inputs [N, {widths[0]}], got shape {tuple(x.shape)}")
    scores = model.attribution(x)[1] if x is not None else None  # [out, in] per layer
    curves = _edge_curves(model, x, n)

    node_x = [[(k + 0.5) / w for k in range(w)] for w in widths]
    wmax = max(layer.in_features * layer.out_features for layer in model.layers)
    ax = _axes(ax, (max(6.0, min(16.0, 0.45 * wmax + 2)), 2.2 * L + 0.8))
    wires, wire_colors, frames, frame_colors, lines, line_colors = [], [], [], [], [], []
    box_h = 0.62
    for l, (layer, (_, phi)) in enumerate(zip(model.layers, curves)):
        n_in, n_out = layer.in_features, layer.out_features
        n_box = n_in * n_out
        box_w = min(0.8 / n_box, 0.16)
        sym = getattr(layer, "symbolic", None)
        owner = model.subnode_to_node(l + 1).tolist()  # output j of this layer feeds node owner[j]
        y0, yb = 2.0 * l, 2.0 * l + 1.0
        for i in range(n_in):
            for j in range(n_out):
                symbolic = sym is not None and (i, j) in sym.functions
                if not symbolic and float(layer.mask[i, j]) == 0.0:
                    continue  # pruned
                alpha = 1.0 if scores is None else math.tanh(beta * float(scores[l][j, i]))
                rgb = SYMBOLIC_COLOR if symbolic else NUMERIC_COLOR
                color = (*rgb, alpha)
                xb = (i * n_out + j + 0.5) / n_box
                lo_y, hi_y = yb - box_h / 2, yb + box_h / 2
                wires += [[(node_x[l][i], y0), (xb, lo_y)], [(xb, hi_y), (node_x[l + 1][owner[j]], y0 + 2.0)]]
                wire_colors += [color, color]
                frames.append([(xb - box_w / 2, lo_y), (xb + box_w / 2, lo_y), (xb + box_w / 2, hi_y),
                               (xb - box_w / 2, hi_y), (xb - box_w / 2, lo_y)])
                frame_colors.append(color)
                v = phi[:, j, i]
                span = float(v.max() - v.min())
                vn = (v - v.min()) / span if span > 1e-12 * max(1.0, float(v.abs().max())) else torch.full_like(v, 0.5)
                px = xb - box_w / 2 + box_w * (0.1 + 0.8 * torch.linspace(0, 1, len(v), dtype=v.dtype, device=v.device))
                py = lo_y + box_h * (0.1 + 0.8 * vn)
                lines.append(torch.stack([px, py], 1).cpu().numpy())
                line_colors.append(color)
                if symbolic:
                    ax.text(xb, hi_y + 0.04, sym.functions[(i, j)].name, ha="center", va="bottom",
                            fontsize=7, color=(*SYMBOLIC_COLOR, max(alpha, 0.3)))
    ax.add_collection(LineCollection(wires, colors=wire_colors, linewidths=0.8))
    ax.add_collection(LineCollection(frames, colors=frame_colors, linewidths=0.6))
    ax.add_collection(LineCollection(lines, colors=line_colors, linewidths=1.4))
    for l, xs_ in enumerate(node_x):
        n_sum = widths[l] - model.n_mult[l]
        ax.scatter(xs_[:n_sum], [2.0 * l] * n_sum, s=40, c="k", zorder=3)
        if model.n_mult[l]:  # multiplication nodes (KAN 2.0)
            ax.scatter(xs_[n_sum:], [2.0 * l] * model.n_mult[l], s=90, c="w", edgecolors="k", marker="o", zorder=3)
            ax.scatter(xs_[n_sum:], [2.0 * l] * model.n_mult[l], s=40, c="k", marker="x", zorder=4)
    for k, name in enumerate(in_vars):
        ax.text(node_x[0][k], -0.25, name, ha="center", va="top", fontsize=11)
    for k, name in enumerate(out_vars):
        ax.text(node_x[-1][k], 2.0 * L + 0.25, name, ha="center", va="bottom", fontsize=11)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.9, 2.0 * L + 0.9)
    ax.set_xticks([])
    ax.set_yticks([2.0 * l for l in range(L + 1)],
                  ["inputs"] + [f"hidden {l}" for l in range(1, L)] + ["outputs"])
    ax.set_ylabel("layer")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    shown = "opacity = tanh(beta * attribution)" if x is not None else "grid ranges"
    ax.set_title(title or f"KAN {model.config['widths']}  ({shown})")
    return _save(ax, save)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def plot_history(history, keys=None, ax=None, logy: bool = True, save=None):
    """Columns of a :class:`~kanedu.History` against the step (train/test RMSE by default)."""
    if not hasattr(history, "plot"):
        raise TypeError(f"history must be a kanedu.History, got {type(history).__name__}")
    ax = history.plot(keys=keys, ax=ax, logy=logy)
    if not ax.get_title():
        ax.set_title("training history")
    return _save(ax, save)


def plot_ka_network(inner, outer, input_names, inner_labels, outer_labels, input_range=(-1.0, 1.0),
                    hidden_range=(-1.0, 1.0), ax=None, title=None, n: int = 200, save=None):
    """A two-level Kolmogorov-Arnold network ``f(x) = sum_q Phi_q(sum_p phi_qp(x_p))`` of given functions.

    Inputs sit at the bottom, the summing hidden nodes in the middle, the summing output on top; every
    edge carries a small plot of its function, the inner ones over ``input_range``, the outer ones over
    ``hidden_range``.

    Args:
        inner: ``inner[q][p]``, the function from input ``p`` to hidden node ``q`` (NumPy in, NumPy out).
        outer: ``outer[q]``, the function from hidden node ``q`` to the output.
        input_names: one label per input; ``inner_labels[q][p]`` and ``outer_labels[q]`` label the edges.

    Returns the Axes; its ``inset_axes`` children are the edge plots (inner edges first, then the outer one
    of each hidden node).
    """
    import numpy as np

    m, d = len(outer), len(input_names)
    if m < 1 or len(inner) != m or any(len(row) != d for row in inner):
        raise ValueError(f"inner must be [hidden nodes][inputs] = [{m}][{d}] functions, got "
                         f"{[len(row) for row in inner]} rows")
    if len(inner_labels) != m or any(len(row) != d for row in inner_labels) or len(outer_labels) != m:
        raise ValueError("inner_labels must have the shape of inner and outer_labels the length of outer")
    ax = _axes(ax, (6, 5.5))
    p_in = [(0.2 + 0.6 * p / max(d - 1, 1), 0.0) for p in range(d)]
    p_hid = [(0.5 if m == 1 else 0.2 + 0.6 * q / (m - 1), 1.0) for q in range(m)]
    p_out = (0.5, 2.0)

    def edge(a, b, fn, lo, hi, label, where):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.75", lw=1.5, zorder=0)
        cx, cy = a[0] + where * (b[0] - a[0]), a[1] + where * (b[1] - a[1])
        inset = ax.inset_axes([cx - 0.07, cy - 0.13, 0.14, 0.26], transform=ax.transData)
        u = np.linspace(lo, hi, n)
        inset.plot(u, fn(u), color="C0", lw=1.5)
        inset.set(xticks=[], yticks=[])
        inset.set_title(label, fontsize=9, pad=2)

    for q in range(m):
        for p in range(d):
            edge(p_in[p], p_hid[q], inner[q][p], *input_range, inner_labels[q][p], where=0.35)
        edge(p_hid[q], p_out, outer[q], *hidden_range, outer_labels[q], where=0.5)
    for (px, py), name in [*zip(p_in, input_names), *((h, "$+$") for h in p_hid), (p_out, "$+$")]:
        ax.scatter([px], [py], s=700, color="white", edgecolor="k", zorder=2)
        ax.text(px, py, name, ha="center", va="center", fontsize=12, zorder=3)
    for y, text in [(2.22, "output"), (1.0, "hidden\nnodes"), (0.0, "inputs")]:
        ax.text(0.5 if y > 2 else 0.98, y, text, ha="center" if y > 2 else "right", va="center", fontsize=9,
                color="0.3")
    ax.set(xlim=(0, 1), ylim=(-0.3, 2.35), title=title or "Kolmogorov-Arnold network")
    ax.axis("off")
    return _save(ax, save)


def plot_staircase(stages, ax=None, keys=("train_rmse", "test_rmse"), title=None, save=None):
    """The loss curves of a grid-extension run, one stage after the other on a common step axis.

    Args:
        stages: ``[(G, history), ...]`` in training order, one :class:`~kanedu.History` per grid size
            (its ``step`` column restarts at every stage; the stages are drawn end to end).
        keys: history columns to draw (the first solid, the others dashed), on a log scale.

    A thin vertical line marks the start of each stage, labelled ``G=...`` near the top of the Axes.
    Returns the Axes.
    """
    stages = list(stages)
    if not stages or not all(isinstance(s, (tuple, list)) and len(s) == 2 and hasattr(s[1], "keys")
                             for s in stages):
        raise TypeError("stages must be a non-empty list of (grid_size, History) pairs")
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    missing = sorted({k for _, h in stages for k in keys if k not in h.keys})
    if missing:
        raise ValueError(f"the histories have no column(s) {missing}; columns: {stages[0][1].keys}")
    ax = _axes(ax, (7, 4))
    offset = 0
    for i, (G, h) in enumerate(stages):
        steps = [offset + t for t in h["step"]]
        for j, key in enumerate(keys):
            ax.plot(steps, h[key], color=f"C{j}", ls="-" if j == 0 else "--",
                    label=key.replace("_", " ") if i == 0 else None)
        ax.axvline(offset, color="0.7", lw=0.8)
        ax.annotate(f"G={G}", (offset, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize=8)
        offset = steps[-1]
    ax.set(xlabel="step (all stages)", ylabel="RMSE" if all("rmse" in k for k in keys) else "value", yscale="log",
           title=title or f"grid extension, G = {', '.join(str(G) for G, _ in stages)}")
    ax.legend()
    return _save(ax, save)


@torch.no_grad()
def plot_edges_vs_ideal(model, inner, outer, x: torch.Tensor, labels=None, input_names=None, axes=None,
                        title=None, n: int = 401):
    """The edges of a KAN ``[n_in, 1, 1]`` against the ideal edges of ``f(x) = F(sum_i g_i(x_i))``.

    Such a KAN can represent ``f`` exactly, but only up to constants: the hidden node may compute
    ``h = a sum_i g_i(x_i) + sum_i b_i`` for any ``a != 0`` and ``b_i``. So each inner edge ``phi_i`` is
    compared with ``a_i g_i + b_i``, ``(a_i, b_i)`` fitted to it by least squares on ``n`` points spanning the
    data's range of ``x_i``, and the outer edge with ``F((h - sum_i b_i) / a)``, ``a`` the mean of the ``a_i``,
    over the range of ``h`` on the data. Each panel draws the ideal (thick grey), the learned edge (red) and
    the edge's knots inside the plotted range, titled with the relative RMS deviation
    ``rms(learned - ideal) / std(ideal)``.

    Args:
        model: a ``kanedu.KAN`` with widths ``[n_in, 1, 1]``.
        inner: ``n_in`` functions ``g_i``, torch ``[n] -> [n]``.
        outer: ``F``, torch ``[n] -> [n]``.
        x: model inputs ``[N, n_in]`` (the training inputs): they set the plotted ranges.
        labels: ``n_in + 1`` legend labels of the ideal curves (default "ideal").
        input_names: ``n_in`` axis labels of the inputs (default ``$x_1$``, ``$x_2$``, ...).
        axes: ``n_in + 1`` Axes to draw into (default: a new figure with one row of panels).
        title: the figure's suptitle, if given.

    Returns:
        ``(axes, deviations)``: the Axes (inner edges first, then the outer one) and the ``n_in + 1``
        relative RMS deviations (floats) in the same order.
    """
    model = _check_model(model)
    widths = list(model.widths)
    if len(widths) != 3 or widths[1:] != [1, 1] or any(getattr(model, "n_mult", ())):
        raise ValueError(f"plot_edges_vs_ideal needs a KAN [n_in, 1, 1] of sum nodes, got widths {model.widths}")
    d = widths[0]
    inner = list(inner)
    if len(inner) != d or not callable(outer):
        raise ValueError(f"inner must be {d} functions (one per input) and outer one function, got {len(inner)}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must be [N, {d}], got {tuple(x.shape)}")
    labels = list(labels) if labels is not None else ["ideal"] * (d + 1)
    names = list(input_names) if input_names is not None else [f"$x_{i + 1}$" for i in range(d)]
    if len(labels) != d + 1 or len(names) != d:
        raise ValueError(f"labels needs {d + 1} entries and input_names {d}, got {len(labels)} and {len(names)}")
    first, second = model.layers
    param = next(first.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    lo, hi = x.min(0).values, x.max(0).values
    u = torch.stack([torch.linspace(float(a), float(b), n, dtype=x.dtype, device=x.device) for a, b in zip(lo, hi)], 1)
    phi_in = first.edge_activations(u)[:, 0, :]  # [n, d]: phi_i(u_i)
    ideals, a_fit, b_fit = [], [], []
    for i, g in enumerate(inner):
        gi = g(u[:, i]).reshape(n)
        A = torch.stack([gi, torch.ones_like(gi)], 1)
        a_i, b_i = torch.linalg.lstsq(A, phi_in[:, i : i + 1]).solution[:, 0].tolist()
        a_fit.append(a_i)
        b_fit.append(b_i)
        ideals.append(a_i * gi + b_i)
    h_data = first(x)[:, 0]
    h = torch.linspace(float(h_data.min()), float(h_data.max()), n, dtype=x.dtype, device=x.device)
    a = sum(a_fit) / d
    ideals.append(outer((h - sum(b_fit)) / a).reshape(n))
    learned = [phi_in[:, i] for i in range(d)] + [second.edge_activations(h[:, None])[:, 0, 0]]
    deviations = [float((l - i).pow(2).mean().sqrt() / i.std()) for l, i in zip(learned, ideals)]

    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, d + 1, figsize=(4.7 * (d + 1), 3.6), squeeze=False)
        axes = list(axes[0])
    axes = list(axes)
    if len(axes) != d + 1:
        raise ValueError(f"axes must hold {d + 1} Axes, got {len(axes)}")
    grids = [first.grid[i] for i in range(d)] + [second.grid[0]]
    xs = [u[:, i] for i in range(d)] + [h]
    names = names + ["hidden value $h$"]
    ylabels = [f"$\\phi_{{{i + 1}}}$ ({name})" for i, name in enumerate(names[:-1])] + [f"$\\phi_{{{d + 1}}}$ ($h$)"]
    for ax, xi, li, ii, label, name, ylabel, grid, dev in zip(
            axes, xs, learned, ideals, labels, names, ylabels, grids, deviations):
        xi, li, ii = xi.cpu().numpy(), li.cpu().numpy(), ii.cpu().numpy()
        ax.plot(xi, ii, color="0.6", lw=4, label=label)
        ax.plot(xi, li, color="tab:red", lw=1.5, label="learned edge")
        knots = grid[(grid >= float(xi[0])) & (grid <= float(xi[-1]))].cpu().numpy()
        ax.plot(knots, [float(ii.min())] * len(knots), "k|", ms=10, label=f"knots (G = {first.grid_size})")
        ax.set(xlabel=name, ylabel=ylabel, title=f"relative RMS deviation {dev:.1e}")
        ax.legend(fontsize=7)
    if title is not None:
        axes[0].figure.suptitle(title)
    return axes, deviations


@torch.no_grad()
def plot_fit_1d(model, dataset=None, f=None, x_range=None, n: int = 400, ax=None, save=None):
    """A model of one input and one output: its curve, the target ``f`` and the training points.

    Args:
        dataset: a pykan dict with ``train_input [N, 1]``/``train_label [N, 1]`` (drawn as points; its range
            is the default ``x_range``).
        f: the target, a function of ``x [n, 1]`` returning ``[n]`` or ``[n, 1]``.
        x_range: ``(lo, hi)`` (default: the data range, else the first layer's grid range, else [-1, 1]).
    """
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None
    if x_range is None:
        if dataset is not None:
            xi = dataset["train_input"]
            x_range = (float(xi.min()), float(xi.max()))
        elif hasattr(model, "layers"):
            layer = model.layers[0]
            x_range = (float(layer.grid[0, layer.spline_order]), float(layer.grid[0, -layer.spline_order - 1]))
        else:
            x_range = (-1.0, 1.0)
    x = torch.linspace(*x_range, n, dtype=dtype, device=device)[:, None]
    pred = model(x)
    if pred.reshape(n, -1).shape[1] != 1:
        raise ValueError(f"plot_fit_1d needs a model with one output, got output shape {tuple(pred.shape)}")
    ax = _axes(ax, (5.0, 3.4))
    if dataset is not None:
        ax.plot(dataset["train_input"][:, 0].cpu().numpy(), dataset["train_label"].reshape(-1).cpu().numpy(), ".",
                ms=3, color="0.6", label="training data")
    if f is not None:
        ax.plot(x[:, 0].cpu().numpy(), f(x).reshape(-1).cpu().numpy(), "k--", lw=1.2, label="target")
    ax.plot(x[:, 0].cpu().numpy(), pred.reshape(-1).cpu().numpy(), lw=2, label="model")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("1-D fit")
    ax.legend(fontsize="small")
    return _save(ax, save)
