"""A wheel install (not editable) runs the default job from outside the repository and writes the model card.

The wheel is built from a copy of the sources and installed, without dependencies, into a fresh virtual environment
that borrows the test environment's installed packages through a ``.pth`` line (no network, a few seconds). The job
then runs with that environment's interpreter, from a folder outside the repository, on a copy of the default recipe:
nothing may be read from the source tree (the card templates used to be, so a wheel install wrote no card).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A fresh venv with structured_hf installed from a freshly built wheel; returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "structured_hf", src / "structured_hf", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp / "dist"
    # setuptools' PEP 517 backend, called directly: what `pip wheel --no-build-isolation` runs, minus pip's start-up.
    _run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))"],
        cwd=src,
    )
    wheels = sorted(dist.glob("structured_hf-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip()
    )
    # The test environment's packages (torch, transformers, ...) after the venv's own: a plain path line, so the
    # editable install's finder there (a .pth *import* line) is not run and cannot shadow the wheel.
    borrowed = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "borrowed.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheels[0]),
        ],
        cwd=tmp,
    )
    return python


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_the_wheel_carries_the_card_templates(wheel_env, tmp_path):
    out = _run(
        [
            str(wheel_env),
            "-c",
            "import structured_hf, structured_hf.cards as c; "
            "print(structured_hf.__file__); print(sorted(p.name for p in c.TEMPLATES.iterdir()))",
        ],
        cwd=tmp_path,
        env=_clean_env(),
    )
    location, templates = out.strip().splitlines()
    assert not Path(location).is_relative_to(REPO), f"imported the source tree, not the wheel: {location}"
    assert Path(location).is_relative_to(wheel_env.parent.parent)
    assert templates == str(["color_autoencoder.md", "color_transformer.md", "structured_gpt.md"])


def test_default_job_from_outside_the_repository_writes_the_card(wheel_env, tmp_path):
    """The README's first command (accelerate launch, the CPU config, the default recipe), shortened to 30 steps,
    run with the wheel's interpreter from a folder that is not the repository."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    for rel in ("scripts/train.py", "configs/color_autoencoder/default.yaml", "configs/accelerate/cpu.yaml"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, work / rel)
    _run(
        [
            str(wheel_env),
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "configs/accelerate/cpu.yaml",
            "--num_cpu_threads_per_process",
            "1",
            "scripts/train.py",
            "configs/color_autoencoder/default.yaml",
            "--output_dir",
            "outputs/default",
            "--max_steps",
            "30",
            "--no_figures",
        ],
        cwd=work,
        env=_clean_env(),
    )
    out = work / "outputs" / "default"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: structured_hf" in card
    assert "| red | `bottleneck` | direction (1, 0, 0, 0) |" in card  # the concept map, from the saved config
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"worst named-color MSE {metrics['named_color_mse_max']:.3g}" in card
    assert json.loads((out / "log_history.json").read_text())[-1]["step"] == 30
