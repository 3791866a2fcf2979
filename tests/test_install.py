"""A non-editable install carries the Hydra configs: the wheel holds proxies/configs/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the build reads; copied so that building leaves no build/ or egg-info in the checkout.
SOURCES = ("pyproject.toml", "README.md", "proxies", "analysis", "sweeps")


def build_wheel(tmp_path: Path) -> Path:
    src, out = tmp_path / "src", tmp_path / "wheel"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                          "-w", str(out)], capture_output=True, text=True, timeout=900)
    if res.returncode and "No matching distribution found for setuptools" in res.stderr:
        pytest.skip("no index to fetch the build backend (setuptools) from")
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = out.glob("proxies-*.whl")
    return wheel


def test_wheel_ships_the_hydra_configs(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    for f in ("config.yaml", "sweep.yaml", "model/laptop.yaml", "model/paper_85m.yaml",
              "exp/lr_sens.yaml", "exp/lr_sens_paper.yaml", "recipe/paper.yaml", "data/c4.yaml"):
        assert f"proxies/configs/{f}" in names, f
    launchers = {n for n in names if n.startswith("proxies/configs/hydra/launcher/")}
    assert {Path(n).name for n in launchers} >= {"local.yaml", "slurm.yaml", "ray.yaml"}
    assert "proxies/config.py" in names and "analysis/report.py" in names
    assert "analysis/dashboard/cli.py" in names and "analysis/dynamics_report/summary.py" in names
