"""`python -m analysis --table`: any sweep's results table, one row per run, gives the report a
proxies sweep gets; column maps, W&B exports, and one-line errors for tables it cannot read."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.load import load_sweep
from analysis.report import analyze
from analysis.sensitivity import lr_sensitivity
from analysis.table import read_table

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
