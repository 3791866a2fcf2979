"""`python -m analysis --table`: any sweep's results table, one row per run, gives the report a
proxies sweep gets; column maps, W&B exports, and one-line errors for tables it cannot read."""

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.load import load_sweep
from analysis.report import analyze
from analysis.sensitivity import lr_sensitivity
from analysis.table import map_table, read_table

REPO = Path(__file__).resolve().parent.parent
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def toy_sweep(widths=(64, 128), depth=2, batch_sizes=(32, 64)) -> pd.DataFrame:
    """A U-shaped loss in log LR whose optimum and sharpness move with width and batch size,
    the widest model's top LR diverged (NaN loss)."""
    rows = []
    for d in widths:
        for bs in batch_sizes:
            for lr in LRS:
                x = np.log10(lr) - (-2.5 - 0.3 * np.log2(d / 64) + 0.2 * np.log2(bs / 32))
                loss = 3.0 - 0.2 * np.log2(d / 64) + 0.4 * x ** 2 * (d / 64)
                if d == max(widths) and lr == LRS[-1]:
                    loss = float("nan")
                rows.append({"width": d, "layers": depth, "batch_size": bs,
                             "learning_rate": lr, "val_loss": loss, "init_loss": 5.5,
                             "attn_logit_max": 10 * d / 64 * (1 + lr * 100)})
    return pd.DataFrame(rows)


TOY_COLS = ["--col", "lr=learning_rate", "--col", "loss=val_loss", "--col", "width=width",
            "--col", "depth=layers", "--col", "loss_at_init=init_loss",
            "--col", "max_logit=attn_logit_max", "--series", "batch_size"]


def run(args, capsys):
    """(exit code, stdout, stderr) of `python -m analysis ARGS`."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_lr_sensitivity_of_a_table_is_the_papers_statistic(tmp_path, capsys):
    toy = toy_sweep()
    toy.to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = run(["--table", tmp_path / "runs.csv", *TOY_COLS], capsys)
    assert code == 0, err
    series = pd.read_csv(tmp_path / "runs-analysis" / "series.csv")
    assert len(series) == 4  # 2 widths × 2 batch sizes
    for _, s in series.iterrows():
        g = toy[(toy["width"] == s["model.d_model"]) & (toy["batch_size"] == s["table.batch_size"])]
        expect = lr_sensitivity(g["learning_rate"], g["val_loss"], 5.5)  # NaN counts as ℓ0
        assert s["lr_sensitivity"] == pytest.approx(expect)
        assert s["n_params_nonembed"] == 12 * 2 * s["model.d_model"] ** 2
    assert series["diverged"].sum() == 2  # the NaN losses
    report = (tmp_path / "runs-analysis" / "report.md").read_text()
    assert "12·L·d²" in report and "NaN or infinite loss count as diverged" in report
    assert "training curves" in report  # no metrics over steps: said, not drawn
    assert (tmp_path / "runs-analysis" / "lr_vs_loss.png").exists()


def test_a_proxies_sweep_exported_to_csv_gives_the_sweep_dirs_numbers(sweeps_runs, tmp_path,
                                                                       capsys):
    root, _ = sweeps_runs.result("all")
    sweep = root / "repro" / "qk_layernorm-tiny" / "main"
    by_dir = analyze(sweep, out=tmp_path / "from_dir")
    load_sweep(sweep).to_csv(tmp_path / "export.csv", index=False)
    code, _, err = run(["--table", tmp_path / "export.csv", "--col", "lr=optim.lr",
                        "--col", "loss=final_eval_ce", "--col", "params=n_params_nonembed",
                        "--col", "loss_at_init=loss_at_init", "--col", "diverged=diverged",
                        "--col", "max_logit=max_attn_logit",
                        "--series", "model.qk_layernorm,train.seed",
                        "--out", tmp_path / "from_table"], capsys)
    assert code == 0, err
    by_table = pd.read_csv(tmp_path / "from_table" / "series.csv")
    a = by_dir.series.rename(columns={"model.qk_layernorm": "qk", "train.seed": "seed"})
    b = by_table.rename(columns={"table.model.qk_layernorm": "qk", "table.train.seed": "seed"})
    a["qk"], b["qk"] = a["qk"].astype(str), b["qk"].astype(str)
    m = a.merge(b, on=["qk", "seed", "n_params_nonembed"], suffixes=("_dir", "_table"))
    assert len(m) == len(a) == len(b) > 0
    for col in ("best_lr", "best_loss", "lr_sensitivity", "diverged"):
        np.testing.assert_allclose(m[f"{col}_dir"].astype(float), m[f"{col}_table"].astype(float))


def test_a_wandb_api_export_with_config_and_summary_dicts(tmp_path, capsys):
    toy = toy_sweep(batch_sizes=(32,))
    rows = [{"name": f"run-{i}",
             "config": repr({"optimizer": {"lr": r.learning_rate}, "model": {"d": r.width,
                                                                        "n_layer": r.layers}}),
             "summary": repr({"eval": {"loss": r.val_loss}, "_step": 1000})}
            for i, r in enumerate(toy.itertuples())]
    pd.DataFrame(rows).to_csv(tmp_path / "wandb.csv", index=False)  # repr writes nan bare
    flat = read_table(tmp_path / "wandb.csv")
    assert {"config.optimizer.lr", "config.model.d", "summary.eval.loss"} <= set(flat.columns)
    code, _, err = run(["--table", tmp_path / "wandb.csv", "--col", "lr=config.optimizer.lr",
                        "--col", "loss=summary.eval.loss", "--col", "width=config.model.d",
                        "--col", "depth=config.model.n_layer", "--col", "vocab=_vocab"],
                       capsys)
    assert code == 2 and "no column '_vocab'" in err  # a role's column must exist
    code, _, err = run(["--table", tmp_path / "wandb.csv", "--col", "lr=config.optimizer.lr",
                        "--col", "loss=summary.eval.loss", "--col", "width=config.model.d",
                        "--col", "depth=config.model.n_layer"], capsys)
    assert code == 0, err
    series = pd.read_csv(tmp_path / "wandb-analysis" / "series.csv")
    assert len(series) == 2 and series["diverged"].tolist() == [0, 1]


def test_a_wandb_ui_export_is_flat_columns(tmp_path, capsys):
    toy = toy_sweep(widths=(64,), batch_sizes=(32,))
    ui = pd.DataFrame({"Name": [f"r{i}" for i in range(len(toy))], "State": "finished",
                       "Runtime": 100, "lr": toy["learning_rate"], "loss": toy["val_loss"],
                       "n_params": 98304})
    ui.to_csv(tmp_path / "ui.csv", index=False)
    code, out, err = run(["--table", tmp_path / "ui.csv", "--col", "params=n_params"], capsys)
    assert code == 0, err  # lr and loss found under their role names
    assert "no loss at init" in out  # said, with what stands in


@pytest.mark.parametrize("table,args,message", [
    ({"lr": [1e-3, 1e-2]}, [], "no column for the final loss (required)"),
    ({"learning_rate": [1e-3, "fast"], "loss": [3.0, 3.1]}, ["--col", "lr=learning_rate"],
     "holds a non-number, 'fast' in row 2"),
    ({"lr": [1e-3, -1e-2], "loss": [3.0, 3.1]}, [], "is not a positive number"),
    ({"lr": [1e-3, 1e-3], "loss": [3.0, 3.1], "seed": [0, 1]}, [],
     "rows 1 and 2 are the same series at the same learning rate"),
    ({"lr": [1e-3, 1e-2], "loss": [3.0, 3.1]}, ["--series", "seed"],
     "--series names 'seed', which the table does not have"),
    ({"lr": [1e-3, 1e-2], "loss": [3.0, 3.1]}, ["--col", "lr"], "needs ROLE=COLUMN"),
    ({"lr": [1e-3, 1e-2], "loss": [3.0, 3.1]}, ["--col", "speed=lr"], "no role 'speed'"),
])
def test_bad_tables_fail_in_one_line_naming_the_fix_and_write_nothing(table, args, message,
                                                                       tmp_path, capsys):
    pd.DataFrame(table).to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run(["--table", tmp_path / "t.csv", *args], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "t-analysis").exists()


def test_the_lr_range_note_names_the_tables_own_grid(tmp_path, capsys):
    toy = toy_sweep(widths=(64,), batch_sizes=(32,))
    toy = toy[toy["learning_rate"] >= 1e-3]
    toy.to_json(tmp_path / "runs.jsonl", orient="records", lines=True)
    code, out, err = run(["--table", tmp_path / "runs.jsonl", *TOY_COLS[:-2]], capsys)
    assert code == 0, err
    assert "--lr-range 0.001 0.3 uses the table's own grid" in out
    code, out, err = run(["--table", tmp_path / "runs.jsonl", *TOY_COLS[:-2],
                          "--lr-range", "1e-3", "0.3"], capsys)
    assert "own grid" not in out


def test_json_lines_and_parquet_read_like_csv(tmp_path):
    toy = toy_sweep(widths=(64,), batch_sizes=(32,))
    toy.to_csv(tmp_path / "a.csv", index=False)
    toy.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    a, b = read_table(tmp_path / "a.csv"), read_table(tmp_path / "a.jsonl")
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    toy.to_parquet(tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(a, read_table(tmp_path / "a.parquet"), check_dtype=False)


def test_the_shipped_example_table_gives_twelve_series(tmp_path, capsys):
    example = REPO / "docs" / "examples" / "qk_layernorm_laptop.csv"  # the README's example
    code, out, err = run(["--table", example, "--col", "lr=learning_rate",
                          "--col", "loss=val_loss", "--col", "params=N",
                          "--col", "loss_at_init=init_loss",
                          "--col", "max_logit=attn_logit_max", "--series", "qk_norm,seed",
                          "--out", tmp_path], capsys)
    assert code == 0, err
    series = pd.read_csv(tmp_path / "series.csv")
    assert len(series) == 12 and series["runs"].eq("7/7").all()


def three_lrs(loss_at_top_lr: float = float("nan"), **extra: List[object]) -> pd.DataFrame:
    """One series at LRs 1e-3, 1e-2, 1e-1 (all inside the default LR-sensitivity range
    [3e-4, 0.3]) with final losses 3.0, 2.5 and `loss_at_top_lr`, plus `extra` columns."""
    return pd.DataFrame({"lr": [1e-3, 1e-2, 1e-1], "loss": [3.0, 2.5, loss_at_top_lr], **extra})


def test_loss_at_init_from_the_vocab_is_ln_v_so_a_diverged_run_counts_as_ln_v(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With only a vocab column, the loss at init is ln V (a uniform prediction's cross-entropy
    in nats), and LR sensitivity counts the NaN (diverged) run as ln V, not log2 V."""
    three_lrs(vocab=[256] * 3).to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = run(["--table", tmp_path / "runs.csv", "--col", "vocab=vocab"], capsys)
    assert code == 0, err
    assert "loss at init taken as ln(vocab size)" in out
    # best loss 2.5; excesses 0.5, 0 and ln 256 − 2.5 = 3.0452 (log2 256 would give 5.5)
    expect = (0.5 + 0.0 + (math.log(256) - 2.5)) / 3
    assert expect == pytest.approx(1.18173, abs=1e-5)
    series = pd.read_csv(tmp_path / "runs-analysis" / "series.csv")
    assert series["lr_sensitivity"].tolist() == pytest.approx([expect])
    assert series["diverged"].tolist() == [1]


def test_loss_at_init_from_the_vocab_caps_a_finite_loss_above_ln_v() -> None:
    """A finite loss between ln V and log2 V (6.0 with V = 256: 5.545 < 6.0 < 8) is above the
    loss at init, so LR sensitivity counts it as ln V."""
    mapped = map_table(three_lrs(6.0, vocab=[256] * 3), {"vocab": "vocab"})
    assert mapped.table["loss_at_init"].tolist() == pytest.approx([5.545177] * 3, abs=1e-6)
    s = lr_sensitivity(mapped.table["optim.lr"], mapped.table["final_eval_ce"],
                       float(mapped.table["loss_at_init"].max()))
    assert s == pytest.approx((0.5 + 0.0 + (5.545177 - 2.5)) / 3, abs=1e-6)


@pytest.mark.parametrize("word", ["true", "1", "yes", "y", "t", "diverged", "crashed", "failed",
                                  "TRUE", " Crashed ", "Yes"])
def test_each_true_word_in_the_diverged_column_marks_the_run_diverged(word: str,
                                                                       tmp_path: Path) -> None:
    """A diverged column of words: true, 1, yes, y, t, diverged, crashed and failed (any case,
    spaces around) mark the run diverged even with a finite loss; "no" does not."""
    three_lrs(2.8, state=[word, "no", "no"]).to_csv(tmp_path / "runs.csv", index=False)
    mapped = map_table(read_table(tmp_path / "runs.csv"), {"diverged": "state"})
    assert mapped.table["diverged"].tolist() == [True, False, False]
    assert mapped.table["status"].tolist() == ["diverged", "done", "done"]


def test_false_like_words_and_blanks_in_the_diverged_column_are_not_diverged(
        tmp_path: Path) -> None:
    """false, 0, no, n, f, done, finished, ok and a blank cell leave a run not diverged."""
    words = ["false", "0", "no", "n", "f", "done", "finished", "ok", ""]
    lrs = [10 ** (-4 + i / 4) for i in range(len(words))]
    pd.DataFrame({"lr": lrs, "loss": 3.0, "state": words}).to_csv(tmp_path / "runs.csv",
                                                                  index=False)
    mapped = map_table(read_table(tmp_path / "runs.csv"), {"diverged": "state"})
    assert dict(zip(words, mapped.table["diverged"])) == {w: False for w in words}
    assert (mapped.table["status"] == "done").all()


@pytest.mark.parametrize("cells,expect", [
    ("1,0,0", [True, False, False]),  # integers
    ("1,,0", [True, False, False]),  # a blank cell: pandas reads the column as floats, 1.0
    ("True,False,False", [True, False, False]),  # booleans
])
def test_a_numeric_or_boolean_diverged_column_marks_its_ones_diverged(
        cells: str, expect: List[bool], tmp_path: Path) -> None:
    """A 0/1 or True/False diverged column: 1 (1.0 where a blank cell makes the column float)
    and True are diverged; 0, False and blank are not."""
    rows = zip([1e-3, 1e-2, 1e-1], cells.split(","))
    (tmp_path / "runs.csv").write_text("lr,loss,flag\n" + "".join(
        f"{lr},3.0,{c}\n" for lr, c in rows))
    mapped = map_table(read_table(tmp_path / "runs.csv"), {"diverged": "flag"})
    assert mapped.table["diverged"].tolist() == expect


# Two sizes × two LRs. Median gradient RMS is a power law in params: N^-1/2 at LR 1e-3 and
# 0.1·N^-1/2 at LR 1e-2, so it reaches AdamW ε = 1e-4 at N = 1e8 and N = 1e6 respectively.
# Update RMS is a decoy: were it read as the gradient RMS, no crossover lies within 1e4× the
# largest size.
EPS_TABLE: Dict[str, List[float]] = {
    "learning_rate": [1e-3, 1e-3, 1e-2, 1e-2],
    "val_loss": [3.0, 2.8, 2.9, 2.7],
    "N": [1e4, 1e6, 1e4, 1e6],
    "g_rms": [1e-2, 1e-3, 1e-3, 1e-4],
    "u_rms": [0.5, 0.4, 0.5, 0.4],
    "adam_eps": [1e-4] * 4,
}
EPS_COLS = ["--col", "lr=learning_rate", "--col", "loss=val_loss", "--col", "params=N",
            "--col", "grad_rms=g_rms", "--col", "update_rms=u_rms", "--col", "eps=adam_eps"]


def test_grad_rms_and_eps_columns_give_the_size_where_grad_rms_reaches_eps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--col grad_rms and --col eps feed the ε crossover: per LR, the params where the power law
    of gradient RMS in params reaches ε (1e8 and 1e6 here, by hand), its smallest gradient RMS
    and ε itself."""
    pd.DataFrame(EPS_TABLE).to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = run(["--table", tmp_path / "runs.csv", *EPS_COLS], capsys)
    assert code == 0, err
    eps = pd.read_csv(tmp_path / "runs-analysis" / "eps_crossover.csv").sort_values("optim.lr")
    assert eps["optim.lr"].tolist() == [1e-3, 1e-2]
    assert eps["eps"].tolist() == [1e-4, 1e-4]
    assert eps["smallest_grad_rms"].tolist() == pytest.approx([1e-3, 1e-4])
    assert eps["params_where_grad_rms_reaches_eps"].tolist() == pytest.approx([1e8, 1e6])
    assert (tmp_path / "runs-analysis" / "grad_rms.png").exists()


def test_grad_rms_update_rms_and_eps_are_read_from_columns_named_as_the_roles() -> None:
    """Columns named grad_rms, update_rms and eps fill those roles without --col: each lands,
    value for value, in the column the analysis reads (grad_rms_median, update_rms_median,
    optim.eps)."""
    df = pd.DataFrame({"lr": [1e-3, 1e-2], "loss": [3.0, 2.9], "grad_rms": [0.01, 0.02],
                       "update_rms": [0.5, 0.6], "eps": [1e-8, 1e-6]})
    t = map_table(df, {}).table
    assert t["grad_rms_median"].tolist() == [0.01, 0.02]
    assert t["update_rms_median"].tolist() == [0.5, 0.6]
    assert t["optim.eps"].tolist() == [1e-8, 1e-6]


def test_without_eps_the_crossover_is_skipped_and_said(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """A gradient RMS column without an ε column: no ε crossover, and a note says why."""
    pd.DataFrame(EPS_TABLE).to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = run(["--table", tmp_path / "runs.csv", *EPS_COLS[:-2]], capsys)
    assert code == 0, err
    assert "no AdamW ε recorded: ε crossover skipped" in out


def test_a_parquet_table_gives_the_csv_tables_report(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The same runs written by pandas to Parquet and to CSV give the same series and ε
    crossover tables (a diverged-word column and a NaN loss included)."""
    df = pd.DataFrame({**EPS_TABLE, "state": ["done", "crashed", "done", "done"]})
    df.loc[3, "val_loss"] = float("nan")
    df.to_csv(tmp_path / "runs.csv", index=False)
    df.to_parquet(tmp_path / "runs.parquet")
    results = {}
    for name in ("runs.csv", "runs.parquet"):
        code, _, err = run(["--table", tmp_path / name, *EPS_COLS, "--col", "diverged=state",
                            "--out", tmp_path / name.replace(".", "-")], capsys)
        assert code == 0, err
        results[name] = [pd.read_csv(tmp_path / name.replace(".", "-") / f)
                         for f in ("series.csv", "eps_crossover.csv")]
    for a, b in zip(results["runs.csv"], results["runs.parquet"]):
        pd.testing.assert_frame_equal(a, b)
    series = results["runs.parquet"][0].sort_values("n_params_nonembed")
    assert series["diverged"].tolist() == [0, 2]  # the crashed run and the NaN loss, both 1e6
