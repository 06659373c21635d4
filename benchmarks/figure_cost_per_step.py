"""The README's benchmark figure: one training step of a KAN and of an MLP with as many parameters.

For hidden widths ``W`` the KAN ``[8, W, W, 1]`` (G=5, k=3, float32) and ``kanedu.matched_mlp`` of it
(same depth, same parameter count within 5 %) each do forward + backward + an Adam step on a batch of
1024 rows. The KAN is timed with both CPU kernels: the compiled loops (``kanedu.native``, the default)
and the torch kernel (``KANEDU_NATIVE=0``, what a GPU runs). All three are timed in interleaved rounds
in one process (``kanedu.timing.compare``), ``--repeats`` times; the figure shows the median of the
repeats and their range (error bars), and ``benchmarks/figures/cost_per_step.json`` the numbers.

The point is the ratio, not the milliseconds: a KAN costs several times an MLP of the same size per
step, because each of its parameters takes part in a spline basis evaluation, not one multiply-add.

Run: python benchmarks/figure_cost_per_step.py [--threads 1] [--repeats 3] [--out benchmarks/figures] [--replot]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

import kanedu
from kanedu import KAN, count_parameters, matched_mlp, native
from kanedu.timing import compare

WIDTHS = (8, 16, 32, 64)
BATCH, IN, G, K = 1024, 8, 5, 3


def training_step(model, x, y, use_native=True):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        previous, native.ENABLED = native.ENABLED, use_native
        try:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        finally:
            native.ENABLED = previous

    return step


def measure(widths=WIDTHS, repeats=3, rounds=5, repeat=5):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, IN, generator=gen) * 2 - 1
    y = torch.sin(x.sum(1, keepdim=True))
    rows = []
    for w in widths:
        kan = KAN([IN, w, w, 1], grid_size=G, spline_order=K, seed=0)
        mlp = matched_mlp(kan, seed=0)
        fns = {"KAN (compiled CPU loops)": training_step(kan, x, y, True),
               "KAN (torch kernel)": training_step(kan, x, y, False),
               "MLP, same parameters": training_step(mlp, x, y)}
        runs = [compare(fns, rounds=rounds, repeat=repeat) for _ in range(repeats)]
        row = {"width": w, "kan_params": count_parameters(kan), "mlp_params": count_parameters(mlp),
               "mlp_widths": list(mlp.widths), "ms": {}}
        for name in fns:
            ms = [r[name] * 1e3 for r in runs]
            row["ms"][name] = {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}
        rows.append(row)
        print(f"W={w:3d}  params KAN {row['kan_params']:6d} MLP {row['mlp_params']:6d}  " + "  ".join(
            f"{n}: {v['median']:.2f} ms" for n, v in row["ms"].items()), flush=True)
    return rows


def plot(rows, path, threads):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("KAN (compiled CPU loops)", "o-"), ("KAN (torch kernel)", "s--"),
                        ("MLP, same parameters", "^-")):
        p = [r["kan_params"] for r in rows]
        med = [r["ms"][name]["median"] for r in rows]
        err = [[m - r["ms"][name]["min"] for m, r in zip(med, rows)],
               [r["ms"][name]["max"] - m for m, r in zip(med, rows)]]
        ax.errorbar(p, med, yerr=err, fmt=style, capsize=3, label=name)
    for r in rows:
        ratio = r["ms"]["KAN (compiled CPU loops)"]["median"] / r["ms"]["MLP, same parameters"]["median"]
        ax.annotate(f"{ratio:.1f}x", (r["kan_params"], r["ms"]["KAN (compiled CPU loops)"]["median"]),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([r["kan_params"] for r in rows], [f"{r['kan_params']:,}\n(W={r['width']})" for r in rows])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("trainable parameters of the KAN [8, W, W, 1] (the MLP has as many, within 5 %)")
    ax.set_ylabel("time per training step (ms)")
    ax.set_title(f"One Adam step, batch {BATCH}, float32, {threads} CPU thread{'s' if threads > 1 else ''}\n"
                 "labels: KAN time / MLP time at the same parameter count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the saved JSON, no timing")
    args = parser.parse_args(argv)
    if args.replot:
        meta = json.loads((args.out / "cost_per_step.json").read_text())
        plot(meta["rows"], args.out / "cost_per_step.png", meta["threads"])
        return 0
    print(kanedu.configure_cpu(threads=args.threads))
    torch.manual_seed(0)
    rows = measure(repeats=args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "cost_per_step.png", args.threads)
    meta = {"threads": args.threads, "repeats": args.repeats, "batch": BATCH, "grid_size": G, "spline_order": K,
            "torch": torch.__version__, "kanedu": kanedu.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "rows": rows}
    (args.out / "cost_per_step.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out / 'cost_per_step.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
