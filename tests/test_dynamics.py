"""Training-dynamics probes in a run (`dynamics.*`): what they record, that each statistic is the
brute-force value on a tiny model, exact resume, vmapped groups, and nothing when off."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from proxies.dynamics import hist_edges
from proxies.model import Transformer
from proxies.probes import make_dynamics_probe
from proxies.rundir import hist_files, read_dynamics
from proxies.step import init_state
from proxies.train import train, train_group

DYN = ("dynamics.enabled=true", "dynamics.every=4", "dynamics.batch_size=2")


def npz(run, step):
    with np.load(hist_files(run)[step]) as z:
        return {k: z[k] for k in z.files}


def brute_histogram(x, edges):
    """Bins of the documented layout, by counting: |x| < lo central, edges mirrored."""
    x = np.asarray(x, np.float32).ravel()
    x = x[np.isfinite(x)]
    P = len(edges) // 2
    pos = edges[P:]
    counts = np.zeros(len(edges) + 1, np.int64)
    for v in x:
        j = np.searchsorted(pos, abs(v), side="right")  # magnitudes >= pos[j-1]
        if j == 0:
            counts[P] += 1
        elif v > 0:
            counts[P + j] += 1
        else:
            counts[P - j] += 1
    return counts


@pytest.mark.parametrize("mlp,norm", [("swiglu", "rmsnorm"), ("gelu", "layernorm")])
def test_each_statistic_is_the_brute_force_value(mlp, norm, make_cfg):
    cfg = make_cfg(*DYN, f"model.mlp={mlp}", f"model.norm={norm}")
    model = Transformer(cfg.model, 256, cfg.train.seq_len)
    params = init_state(model, cfg, jax.random.key(1)).params
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, cfg.train.seq_len + 1)))
    scalars, arrays = jax.device_get(make_dynamics_probe(model, cfg)({"params": params}, batch))
    _, state = model.apply({"params": params}, batch[:, :-1], mutable=["dynamics"])
    site = lambda name: np.asarray(_get(state["dynamics"], name), np.float64)  # noqa: E731

    h = site("block_1/resid_out")
    assert scalars["act/block_1/resid_out/kurtosis"] == pytest.approx(
        sps.kurtosis(h.ravel(), fisher=False), rel=1e-4)
    a = np.abs(h)
    assert scalars["massive/block_1/resid_out/ratio"] == pytest.approx(
        a.max() / np.median(a), rel=1e-4)
    massive = np.sum((a > 100) & (a >= 1000 * np.median(a)))
    assert scalars["massive/block_1/resid_out/count"] == massive

    x_in, x_out = site("final_norm_in"), site("final_out")
    mean = x_in.mean(-1, keepdims=True) if norm == "layernorm" else 0.0
    ms = ((x_in - mean) ** 2).mean(-1, keepdims=True)
    x_normed = (x_in - mean) / np.sqrt(ms + 1e-6)
    max_rms = lambda x: np.abs(x).max() / np.sqrt(np.mean(x ** 2))  # noqa: E731
    assert scalars["norm/ln_final/compression"] == pytest.approx(
        max_rms(x_in) / max_rms(x_normed), rel=1e-4)
    assert scalars["norm/ln_final/reamplification"] == pytest.approx(
        max_rms(x_out) / max_rms(x_normed), rel=1e-4)

    B = np.asarray(params["block_0"]["mlp"]["down"]["kernel"], np.float64)
    A = site("block_0/mlp/down_in").reshape(-1, B.shape[0])
    C = A @ B
    E = np.linalg.norm(A, axis=1)[:, None] * np.linalg.norm(B, axis=0)[None, :]
    R = C / E
    assert scalars["ec/block_0/mlp/down/pearson_E"] == pytest.approx(
        np.corrcoef(np.abs(C).ravel(), E.ravel())[0, 1], abs=1e-4)
    assert scalars["ec/block_0/mlp/down/pearson_R"] == pytest.approx(
        np.corrcoef(np.abs(C).ravel(), np.abs(R).ravel())[0, 1], abs=1e-4)

    edges = hist_edges(per_decade=cfg.dynamics.per_decade)
    w = np.asarray(params["block_0"]["attn"]["query"]["kernel"])
    np.testing.assert_array_equal(arrays["hist/weight/block_0/attn/query/kernel"],
                                  brute_histogram(w, edges))
    if mlp == "swiglu":
        g, u = site("block_0/mlp/gate_pre"), site("block_0/mlp/up_out")
        s = g / (1 + np.exp(-g))
        near = np.mean(np.abs(s) < 1e-2 * np.sqrt(np.mean(s ** 2)))
        assert scalars["swiglu/block_0/near_zero_swish"] == pytest.approx(near, abs=1e-6)
        assert np.allclose(s * u, site("block_0/mlp/down_in"), rtol=1e-4, atol=1e-6)
    else:
        assert not any(k.startswith("swiglu/") for k in scalars)


def _get(tree, name):
    node = tree
    for part in name.split("/"):
        node = node[part]
    return node[0]


def test_a_run_records_dynamics_and_resumes_them_exactly(make_cfg):
    full = make_cfg(*DYN, out="full")
    cut = make_cfg(*DYN, out="cut")
    train(full)
    train(cut, stop_after=7)  # checkpoint at 7; the probe of step 8 is not recorded yet
    assert [r["step"] for r in read_dynamics(Path(cut.out_dir))] == [0, 4]
    train(cut)
    rows_full, rows_cut = read_dynamics(Path(full.out_dir)), read_dynamics(Path(cut.out_dir))
    assert [r["step"] for r in rows_cut] == [0, 4, 8, 12] and rows_cut == rows_full
    for step in (0, 12):
        a, b = npz(Path(full.out_dir), step), npz(Path(cut.out_dir), step)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    z = npz(Path(full.out_dir), 12)
    assert z["hist/act/block_0/resid_out"].sum() == 2 * 16 * 32  # batch_size × seq × d_model
    assert {"hist/weight/block_0/mlp/down/kernel", "hist/grad/embed/embedding",
            "hist/act/block_1/attn/probs", "hist/act/logits", "top/act/logits/channels",
            "ec_sample/block_1/mlp/down"} <= set(z)


def test_off_by_default_writes_nothing(make_cfg):
    cfg = make_cfg()
    train(cfg)
    assert not (Path(cfg.out_dir) / "dynamics").exists()


def test_a_vmapped_group_records_each_members_dynamics(make_cfg):
    lrs = ("1e-3", "1e-2", "3e-2")  # test_sweep.py's group of 3: one compiled group step
    group = [make_cfg(*DYN, f"optim.lr={lr}", out=f"g{lr}") for lr in lrs]
    solo = make_cfg(*DYN, "optim.lr=1e-2", out="solo")
    train_group(group, vmap=True)
    train(solo)
    a, b = read_dynamics(Path(group[1].out_dir)), read_dynamics(Path(solo.out_dir))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        assert [k for k in ra if ra[k] is None] == [k for k in rb if rb[k] is None]  # non-finite
        keys = sorted(k for k in ra if "top_channel" not in k and ra[k] is not None)
        np.testing.assert_allclose([ra[k] for k in keys], [rb[k] for k in keys],
                                   rtol=2e-3, atol=1e-5)
    assert read_dynamics(Path(group[0].out_dir)) != a  # the members' own records


def test_summary_keeps_each_verdicts_step_0_null(make_cfg):
    """The numbers sweeps/dynamics.py judges against (analysis.dynamics_report.dynamics_summary's
    `_init` keys, R's lead and E's gain) against a brute-force reading of stats.jsonl."""
    from analysis.dynamics_report import dynamics_summary
    cfg = make_cfg(*DYN, "model.mlp=swiglu", "model.norm=rmsnorm", out="null")
    train(cfg)
    run = Path(cfg.out_dir)
    rows = read_dynamics(run)
    first, last = rows[0], rows[-1]
    assert first["step"] == 0
    s = dynamics_summary(run)
    assert s["first_step"] == 0 and s["n_probes"] == len(rows)
    L = cfg.model.n_layers
    med = lambda xs: float(np.median(xs))  # noqa: E731
    assert s["swiglu_coincidence_init"] == pytest.approx(
        med([first[f"swiglu/block_{i}/coincidence"] for i in range(L)]))
    assert s["resid_kurtosis_median_init"] == pytest.approx(
        med([first[f"act/block_{i}/resid_out/kurtosis"] for i in range(L)]))
    projections = sorted({k[3:-len("/pearson_E")] for k in first if k.startswith("ec/")
                          and k.endswith("/pearson_E")})
    lead = lambda r: med([r[f"ec/{p}/top_overlap_R"] - r[f"ec/{p}/top_overlap_E"]  # noqa: E731
                          for p in projections])
    assert s["ec_top_lead_init"] == pytest.approx(lead(first))
    assert s["ec_top_lead"] == pytest.approx(lead(last))
    assert s["ec_pearson_E_gain"] == pytest.approx(
        med([last[f"ec/{p}/pearson_E"] - first[f"ec/{p}/pearson_E"] for p in projections]),
        abs=1e-6)
    norms = sorted({k[5:-len("/compression")] for k in first if k.startswith("norm/")
                    and k.endswith("/compression")})
    assert s["compression_median_init"] == pytest.approx(
        med([first[f"norm/{n}/compression"] for n in norms]))
    assert s["reamplification_max_init"] == pytest.approx(
        max(first[f"norm/{n}/reamplification"] for n in norms))
