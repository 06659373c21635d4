"""KAN sequence models against the torch layers they replace, at matched parameters, measured in one run.

Forward + backward on the CPU (float32), candidates interleaved round by round so that a busy moment of a
shared machine hits all of them; each ratio is reported as the median over rounds with its min-max spread.

* **KAN-GRU step**: ``KANGRUCell(in, H)`` on ``x [B, in], h [B, H]`` against ``torch.nn.GRUCell(in, H')``
  with ``H'`` chosen by ``kanedu.sequence.matched_gru`` (same parameter count within 5%). Also, for
  information, whole sequences: ``KANGRU`` against ``torch.nn.GRU`` (torch's fused CPU loop) and against a
  Python loop over ``nn.GRUCell``.
* **KAN feed-forward block**: ``KANFeedForward(d, h)`` with ``h = kan_ffn_hidden(d)`` against the
  ``MLPFeedForward(d, 4d)`` it replaces in ``CharLM``, on ``B * T`` LayerNorm'd token vectors.

Run: python benchmarks/bench_sequence.py [--threads 1] [--rounds 7]
Targets (issue 14): KAN-GRU step <= 3x nn.GRUCell; KAN feed-forward block <= 3x the MLP block.

Measured on the 2-core course machine (1 thread, quiet, 2026-12-01, after the kernel redesign and its speed-up):
KAN-GRU step 2.92x [2.29-3.73 over rounds] at lesson 09's size (3.69x before backward reused forward's knot
constants), 2.74x at 2 -> 8, 1.58x at 16 -> 32; KAN feed-forward 3.28x [3.11-4.11] at d = 32 (MISSES the 3x
target), 2.12x at d = 64, 1.59x at d = 128. Before the redesign the same script read 2.25-2.34x and 2.30-2.43x
at the lesson sizes: small layers pay a fixed cost per call (autograd nodes of the weight combination, the
knot constants, numba's argument checks) that the old generated code did not. At d = 32 the sparse route is
slower still (4.1x against the dense route's 3.2x, same run). With ``KANEDU_NATIVE=0`` (the torch kernel)
the small cases missed the targets before too (4.2-4.8x for the steps, 4.0x for the block at d = 32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

import kanedu  # noqa: E402
from kanedu import count_parameters, native  # noqa: E402
from kanedu.sequence import (  # noqa: E402
    KANGRU,
    KANFeedForward,
    KANGRUCell,
    MLPFeedForward,
    kan_ffn_hidden,
    matched_gru,
)


def fwd_bwd(fn, *inputs):
    """One forward + backward of ``fn(*inputs)`` (a sum of the outputs as the loss), fresh input grads."""

    def step():
        xs = [x.detach().requires_grad_() for x in inputs]
        out = fn(*xs)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()

    return step


def compare(cands: dict, rounds: int) -> dict:
    """Interleaved medians: ``{name: [seconds per round]}`` (first candidate = baseline)."""
    for fn in cands.values():  # warm-up (numba compiles its loops on the first call)
        fn()
    times = {c: [] for c in cands}
    for _ in range(rounds):
        for c, fn in cands.items():
            times[c].append(median_time(fn, repeat=10, warmup=2))
    return times


def report(title: str, params: dict, times: dict) -> tuple[float, float, float]:
    base_name = next(iter(times))
    base = times[base_name]
    print(f"\n{title}")
    print(f"  {'implementation':34s} {'params':>8s} {'ms (fwd+bwd)':>12s} {'x baseline':>10s} {'spread':>13s}")
    out = None
    for c, t in times.items():
        ratios = [a / b for a, b in zip(t, base)]
        med = statistics.median(ratios)
        print(f"  {c:34s} {params.get(c, ''):>8} {statistics.median(t) * 1e3:12.3f} {med:10.2f} "
              f"{min(ratios):6.2f}-{max(ratios):5.2f}")
        if out is None and c != base_name:
            out = (med, min(ratios), max(ratios))
    return out


def gru_case(B, n_in, H, T, rounds):
    gen = torch.Generator().manual_seed(0)
    kan_seq = KANGRU(n_in, H, batch_first=False)
    kan_cell: KANGRUCell = kan_seq.cells[0]
    gru_seq = matched_gru(kan_seq)
    cell = torch.nn.GRUCell(n_in, gru_seq.hidden_size)
    Hg = gru_seq.hidden_size
    x = torch.rand(B, n_in, generator=gen) * 2 - 1
    hk, hg = torch.rand(B, H, generator=gen) * 2 - 1, torch.rand(B, Hg, generator=gen) * 2 - 1
    params = {f"nn.GRUCell({n_in}, {Hg}) (baseline)": count_parameters(cell),
              f"KANGRUCell({n_in}, {H})": count_parameters(kan_cell)}
    step = compare({f"nn.GRUCell({n_in}, {Hg}) (baseline)": fwd_bwd(cell, x, hg),
                    f"KANGRUCell({n_in}, {H})": fwd_bwd(kan_cell, x, hk)}, rounds)
    r_step = report(f"one recurrent step, B={B}: KAN-GRU cell vs a GRU cell of matched parameters", params, step)

    xs = torch.rand(T, B, n_in, generator=gen) * 2 - 1

    def cell_loop(x):
        h = x.new_zeros(B, Hg)
        for x_t in x:
            h = cell(x_t, h)
        return h

    seq = compare({f"nn.GRU({n_in}, {Hg}) (baseline)": fwd_bwd(gru_seq, xs),
                   f"KANGRU({n_in}, {H})": fwd_bwd(kan_seq, xs),
                   "loop over nn.GRUCell": fwd_bwd(cell_loop, xs)}, rounds)
    params = {f"nn.GRU({n_in}, {Hg}) (baseline)": count_parameters(gru_seq),
              f"KANGRU({n_in}, {H})": count_parameters(kan_seq), "loop over nn.GRUCell": count_parameters(cell)}
    report(f"a sequence of T={T} steps, B={B} (information)", params, seq)
    return r_step


def ffn_case(tokens, d, rounds):
    gen = torch.Generator().manual_seed(0)
    h = kan_ffn_hidden(d)
    mlp, kan = MLPFeedForward(d), KANFeedForward(d, h)
    x = torch.nn.functional.layer_norm(torch.randn(tokens, d, generator=gen), (d,))  # what the pre-norm feeds
    names = (f"MLPFeedForward({d}, {4 * d}) (baseline)", f"KANFeedForward({d}, {h})")
    params = {names[0]: count_parameters(mlp), names[1]: count_parameters(kan)}
    times = compare({names[0]: fwd_bwd(mlp, x), names[1]: fwd_bwd(kan, x)}, rounds)
    return report(f"feed-forward block on {tokens} tokens, d_model={d}", params, times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1, as lessons 09-10 use: these ops are small)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    cfg = kanedu.configure_cpu(threads=args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU; {cfg}")
    print(f"kanedu engine on the CPU: {'compiled loops (kanedu.native, numba)' if native.ENABLED else 'torch kernel'}")
    results = {
        "KAN-GRU step, lesson 09 size (1 -> 10, B=128)": (gru_case(128, 1, 10, 16, args.rounds), 3.0),
        "KAN-GRU step (2 -> 8, B=128)": (gru_case(128, 2, 8, 50, args.rounds), 3.0),
        "KAN-GRU step (16 -> 32, B=256)": (gru_case(256, 16, 32, 50, args.rounds), 3.0),
        "KAN FFN, lesson 10 size (d=32, 1024 tokens)": (ffn_case(1024, 32, args.rounds), 3.0),
        "KAN FFN (d=64, 2048 tokens)": (ffn_case(2048, 64, args.rounds), 3.0),
        "KAN FFN (d=128, 4096 tokens)": (ffn_case(4096, 128, args.rounds), 3.0),
    }
    print("\nsummary (KAN / torch baseline at matched parameters, fwd+bwd; median [min-max over rounds]; target):")
    for name, ((med, lo, hi), target) in results.items():
        status = "meets" if med <= target else "MISSES"
        print(f"  {name:46s} {med:5.2f}x [{lo:.2f}-{hi:.2f}] (target <= {target}x: {status})")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"\n({time.time() - t0:.0f} s)")
