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

Measured on the 2-core course machine (1 thread, quiet, 2026-12-02, two runs of 11 rounds): KAN-GRU step
2.88-2.97x at lesson 09's size [2.25-3.73 over rounds], 2.25-2.34x at 2 -> 8, 1.47x at 16 -> 32; KAN
feed-forward 2.57-2.75x at d = 32 [2.08-3.61], 2.07-2.11x at d = 64, 1.55-1.60x at d = 128. A separate
script with 25 interleaved rounds of the lesson-09 step read 2.70-2.83x (quartiles 2.62-3.05).

The day before the same script read 2.92x and 3.28x at the lesson sizes (the feed-forward missed 3x). What
closed the gap, each measured in one process against the previous code:
* narrow matrix products (2-15 columns, the d = 32 block's 13) computed transposed: MKL ran them at a fifth
  to a half of its speed (``native._mm``);
* small calls keep Phi, b(x) and b'(x) for backward instead of writing them again (``native.KEEP_BYTES``);
* ``KANLayer`` on the CPU loops is one autograd node (``native.NativeKANLayerFunction``: the weights
  combined in NumPy, their chain rule in backward), its knot constants kept per grid, no reshape nodes;
* the dense route writes Phi while it locates (one pass).
Together: the d = 32 block 0.70-0.77x of the previous commit's time, the lesson-09 step 0.86-0.89x.
What is left for a small layer call (10 -> 30, B = 128, fwd + bwd about 240 us): the sparse loops 71 us,
numba dispatch about 10 us, autograd and torch (the engine, the gradient accumulation of three
parameters, the Function wrapper) about 110 us, our Python around the loops about 50 us. Tried and
dropped: the GRU gate arithmetic fused into one autograd Function (72 against 80 us per call: the
Function's own cost ate the saving; a numba loop for it was slower, having no vectorised exp or tanh).
With ``KANEDU_NATIVE=0`` (the torch kernel) the small cases missed the targets before (4.2-4.8x for the
steps, 4.0x for the block at d = 32).
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
