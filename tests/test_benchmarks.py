"""benchmarks/gpu.py runs anywhere: on CPU at tiny sizes it reports every figure it reports on a
GPU, by the FLOP convention it states."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load_gpu_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_on_cpu_at_tiny_sizes(tmp_path):
    gpu = load_gpu_benchmark()
    out = tmp_path / "gpu.json"
    result = gpu.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["throughput"] == result["throughput"]
    (row,) = result["throughput"]
    size = gpu.TINY[0]
    # FLOPs per token by the stated convention: 6·(non-embedding + readout) + 12·L·d·seq
    want = (6 * (row["nonembed_params"] + 256 * size.d_model)
            + 12 * size.n_layers * size.d_model * 32)
    assert row["flops_per_token"] == want
    assert math.isclose(row["tokens_s"], row["batch"] * row["seq"] / (row["ms_step"] / 1e3))
    assert math.isclose(row["mfu"], want * row["tokens_s"] / result["peak_flops"])
    assert row["mfu"] > 0
    (group,) = result["groups"]
    assert math.isclose(group["runs_per_hour_vmapped"],
                        3600 * group["group"] / (group["steps_per_run"] * group["ms_step_group"]
                                                 / 1e3))
    assert math.isclose(group["speedup"],
                        group["runs_per_hour_vmapped"] / group["runs_per_hour_sequential"])


def test_the_vmap_benchmark_times_a_group_against_one_by_one_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location(
        "sweep_vmap_benchmark", BENCH.with_name("sweep_vmap.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bench(16, 1, 2, group=2, batch=2, seq=8, steps=1, repeats=1, run_steps=10,
                 dtype="float32")
    line = capsys.readouterr().out.strip()
    assert line.startswith("d16 L1 H2  group 2: one by one") and "runs/h) -> x" in line
    assert float(line.rsplit("-> x", 1)[1]) > 0


def test_the_profile_sorts_both_sides_ops_into_the_same_families():
    """nanogpt.py --profile sets nanoGPT's ops beside ours per family: our compiled step's sites
    (a tiny model at nanoGPT's recipe) and PyTorch's op names land where they belong."""
    sys.path.insert(0, str(BENCH.parent))
    import nanogpt as N
    import step_speed as S

    step, *_ = S.setup(32, 1, 2, 65, 2, 8, "float32", [*N.RECIPE, "model.d_model=32",
                                                      "model.n_layers=1", "model.n_heads=2"])
    families = {site: S.site_family(site) for site in set(S.kernel_sites(step.as_text()).values())}
    assert set(families.values()) <= set(S.FAMILIES)
    for site, fam in families.items():
        if site.endswith("dot_general") and "/mlp/" in site:
            assert fam == "matmul", site
        if "attn._explicit" in site and site.endswith("dot_general"):
            assert fam == "attention core", site
        if site.startswith("step "):
            assert fam == "optimizer, clip, step metrics", site
        if "/mlp/" in site and site.rsplit("/", 1)[-1] in ("tanh", "add_any", "integer_pow"):
            assert fam == "GELU", site
    assert {"matmul", "attention core", "GELU", "layernorm"} <= set(families.values())
    assert N.aten_family("backward", "aten::mm") == "matmul"
    assert N.aten_family("forward", "aten::_scaled_dot_product_flash_attention_for_cpu") == \
        "attention core"
    assert N.aten_family("backward", "aten::native_layer_norm_backward") == "layernorm"
    assert N.aten_family("backward", "aten::gelu_backward") == "GELU"
    assert N.aten_family("optimizer", "aten::addcdiv_") == "optimizer, clip, step metrics"
    assert N.aten_family("forward", "aten::view") == "host (dispatch, autograd, Python)"
    assert N.aten_family("backward", "autograd::engine::evaluate_function: MmBackward0") == \
        "host (dispatch, autograd, Python)"
