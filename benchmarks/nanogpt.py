"""proxies vs nanoGPT on nanoGPT's own CPU recipe (its README, "I only have a macbook").

    python benchmarks/nanogpt.py --nanogpt PATH/TO/nanoGPT --torch-python PATH/TO/python \\
        --shakespeare PATH/TO/char-rnn/data/tinyshakespeare/input.txt

nanoGPT (karpathy/nanoGPT) and a Python with PyTorch live outside this project; nothing of
theirs is needed otherwise. Both sides train the same recipe on the same char-level Tiny
Shakespeare ids (written the way nanoGPT's prepare.py writes them, into its
data/shakespeare_char/): 4 layers, 4 heads, width 128, block 64, batch 12, LR 1e-3 cosine to 1e-4
with 100 warm-up steps, AdamW (0.9, 0.99), coupled decay 0.1 on matrices, clip 1, no dropout, no
bias, tied embeddings, learned positions, init N(0, 0.02). nanoGPT runs eager (`--compile=False`,
its CPU advice). Prints each side's median ms per step (nanoGPT: its per-iteration times; proxies:
its logged throughput, probes off), the whole command's wall time and the final held-out loss.

    python benchmarks/nanogpt.py --profile --nanogpt ... --torch-python ... --shakespeare ...

instead profiles one step of each side at this recipe (nanoGPT's with torch.profiler,
benchmarks/nanogpt_profile.py; ours with XLA's kernel trace) and prints the time per op family
side by side, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import FAMILIES, kernel_profile, setup, site_family  # noqa: E402

BATCH, BLOCK = 12, 64
NANOGPT_ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
NANOGPT_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def write_char_dataset(text_path: Path, out: Path) -> int:
    """train.bin, val.bin (uint16, first 90% / last 10%) and meta.pkl as nanoGPT's
    data/shakespeare_char/prepare.py writes them. Returns the vocabulary size."""
    data = text_path.read_text()
    chars = sorted(set(data))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in data], np.uint16)
    n = int(0.9 * len(ids))
    out.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(out / "train.bin")
    ids[n:].tofile(out / "val.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return len(chars)


def timed(cmd: List[str], cwd: Path, timeout: float) -> tuple:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed ({p.returncode}): "
                 f"{(p.stderr.strip().splitlines() or [''])[-1]}")
    return p.stdout + p.stderr, wall


def run_nanogpt(repo: Path, python: str, iters: int, out_dir: Path, timeout: float) -> Dict:
    cmd = [python, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
           "--compile=False", "--eval_iters=20", "--log_interval=1", f"--block_size={BLOCK}",
           f"--batch_size={BATCH}", "--n_layer=4", "--n_head=4", "--n_embd=128",
           f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
           f"--out_dir={out_dir}"]
    log, wall = timed(cmd, repo, timeout)
    ms = [float(m.group(3)) for line in log.splitlines()
          if (m := NANOGPT_ITER.match(line)) and int(m.group(1)) > 0]
    evals = [m for line in log.splitlines() if (m := NANOGPT_EVAL.match(line))]
    return {"ms_per_step": statistics.median(ms), "wall_s": wall,
            "final_val_loss": float(evals[-1].group(3)) if evals else None}


RECIPE = [  # nanoGPT's recipe as proxies overrides (the model and its optimizer)
    "model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.tie_embeddings=true",
    "model.use_bias=false", "model.init_std=0.02", "model.pos_emb=learned", "optim.lr=1e-3",
    "optim.min_lr=1e-4", "optim.b2=0.99", "optim.weight_decay=0.1", "optim.independent_wd=false",
    "optim.warmup_steps=100", "optim.grad_clip=1.0", "optim.z_loss=0"]


def run_proxies(data: Path, vocab: int, iters: int, out_dir: Path, timeout: float,
                extra: List[str]) -> Dict:
    cmd = [sys.executable, "-m", "proxies.train", f"out_dir={out_dir}", "data.source=tokens",
           f"data.train_bin={data / 'train.bin'}", f"data.val_bin={data / 'val.bin'}",
           f"data.vocab_size={vocab}", *RECIPE, f"train.steps={iters}",
           f"train.batch_size={BATCH}", f"train.seq_len={BLOCK}", "train.eval_every=250",
           "train.eval_batches=20", "train.log_every=10", f"train.checkpoint_every={iters}",
           "train.probes=false", "train.quiet=true", "wandb.mode=disabled", *extra]
    _, wall = timed(cmd, Path.cwd(), timeout)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["perf/tokens_per_s"] for r in rows if r.get("perf/tokens_per_s")]
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"ms_per_step": statistics.median(1e3 * BATCH * BLOCK / t for t in tok_s),
            "wall_s": wall, "final_val_loss": summary["final_eval_ce"]}


VIEWS = {"view", "t", "transpose", "reshape", "as_strided", "_unsafe_view", "empty",
         "empty_strided", "split", "detach", "expand", "permute", "unsqueeze", "squeeze",
         "slice", "select", "alias", "to", "contiguous"}  # no data moved: dispatch cost only


def aten_family(phase: str, op: str) -> str:
    """The op family (step_speed.FAMILIES) of one of nanoGPT's profiled ops in its phase."""
    if phase == "optimizer":
        return "optimizer, clip, step metrics"
    if not op.startswith("aten::"):
        return "host (dispatch, autograd, Python)"
    name = op.removeprefix("aten::")
    if name in VIEWS:
        return "host (dispatch, autograd, Python)"
    if "scaled_dot_product" in name:
        return "attention core"
    if name in {"mm", "addmm", "bmm", "matmul", "linear", "baddbmm"}:
        return "matmul"
    if "layer_norm" in name:
        return "layernorm"
    if name.startswith("gelu"):
        return "GELU"
    if any(k in name for k in ("embedding", "index", "log_softmax", "nll_loss", "cross_entropy")):
        return "embedding and loss"
    if name in {"cat", "copy_", "clone", "_to_copy", "stack"}:
        return "layout (copy, transpose, concatenate)"
    return "residual and other elementwise"


def torch_profile(repo: Path, python: str, vocab: int, steps: int, timeout: float) -> tuple:
    """(wall ms per step, {family: self CPU ms per step}) of nanoGPT's eager step."""
    out, _ = timed([python, str(Path(__file__).with_name("nanogpt_profile.py")),
                    f"--nanogpt={repo}", f"--vocab={vocab}", f"--batch={BATCH}",
                    f"--block={BLOCK}", f"--steps={steps}"], Path.cwd(), timeout)
    report = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    families: Dict[str, float] = dict.fromkeys(FAMILIES, 0.0)
    for key, ms in report["self_ms"].items():
        phase, op = key.split("\t", 1)
        families[aten_family(phase, op)] += ms
    return report["ms_per_step"], families


def xla_profile(vocab: int, steps: int, extra: List[str]) -> tuple:
    """(wall ms per step, {family: XLA kernel ms per step}) of our step at the recipe; the time
    outside kernels is counted as host time."""
    step, state, hp, batches, _ = setup(128, 4, 4, vocab, BATCH, BLOCK, "float32",
                                        [*RECIPE, "train.probes=false", *extra])
    wall, per_site = kernel_profile(step, state, hp, batches, steps)
    families: Dict[str, float] = dict.fromkeys(FAMILIES, 0.0)
    for site, ms in per_site.items():
        families[site_family(site)] += ms
    families["host (dispatch, autograd, Python)"] += max(0.0, wall - sum(per_site.values()))
    return wall, families


def profile_table(theirs: tuple, ours: tuple) -> str:
    """Markdown: per op family, ms per step and share of the step on each side."""
    (t_wall, t_fam), (o_wall, o_fam) = theirs, ours
    t_sum, o_sum = sum(t_fam.values()), sum(o_fam.values())
    lines = ["| op family | nanoGPT (PyTorch eager) ms/step | proxies (XLA) ms/step | "
             "proxies / nanoGPT |", "|---|---|---|---|"]
    for f in sorted(FAMILIES, key=lambda f: -max(t_fam[f], o_fam[f])):
        ratio = f"{o_fam[f] / t_fam[f]:.2f}x" if t_fam[f] > 0 else "–"
        lines.append(f"| {f} | {t_fam[f]:.2f} ({t_fam[f] / t_sum:.0%}) | "
                     f"{o_fam[f]:.2f} ({o_fam[f] / o_sum:.0%}) | {ratio} |")
    lines.append(f"| **sum** (wall without the profiler) | **{t_sum:.1f}** ({t_wall:.1f}) | "
                 f"**{o_sum:.1f}** ({o_wall:.1f}) | {o_sum / t_sum:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a karpathy/nanoGPT checkout")
    ap.add_argument("--torch-python", required=True, help="a Python that imports torch")
    ap.add_argument("--shakespeare", type=Path, required=True,
                    help="Tiny Shakespeare (karpathy/char-rnn data/tinyshakespeare/input.txt)")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--proxies-arg", action="append", default=[],
                    help="extra proxies.train override (repeatable)")
    ap.add_argument("--profile", action="store_true",
                    help="profile one step of each side per op family instead of training")
    ap.add_argument("--profile-steps", type=int, default=50)
    args = ap.parse_args()
    if not (args.nanogpt / "train.py").is_file():
        sys.exit(f"error: {args.nanogpt} holds no train.py; pass a karpathy/nanoGPT checkout")
    data = args.nanogpt / "data" / "shakespeare_char"
    vocab = write_char_dataset(args.shakespeare, data)
    if args.profile:
        theirs = torch_profile(args.nanogpt.resolve(), args.torch_python, vocab,
                               args.profile_steps, args.timeout)
        ours = xla_profile(vocab, args.profile_steps, args.proxies_arg)
        print(f"one step at nanoGPT's recipe ({BATCH} x {BLOCK} tokens), ms per step by op "
              f"family; PyTorch self CPU time, XLA kernel time (summed over threads):\n")
        print(profile_table(theirs, ours))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "nanoGPT (PyTorch eager)": run_nanogpt(args.nanogpt.resolve(), args.torch_python,
                                                   args.iters, Path(tmp) / "nanogpt",
                                                   args.timeout),
            "proxies": run_proxies(data.resolve(), vocab, args.iters, Path(tmp) / "proxies",
                                   args.timeout, args.proxies_arg),
        }
    print(f"{'':26s} {'ms/step':>8s} {'wall s':>7s} {'val loss':>9s}")
    for name, r in results.items():
        print(f"{name:26s} {r['ms_per_step']:8.1f} {r['wall_s']:7.1f} {r['final_val_loss']:9.3f}")
    ratio = results["nanoGPT (PyTorch eager)"]["ms_per_step"] / results["proxies"]["ms_per_step"]
    print(f"proxies step speed: {ratio:.2f}x nanoGPT's")


if __name__ == "__main__":
    main()
