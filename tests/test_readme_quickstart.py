"""The README's Python quickstart runs as written, and does what its comments say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def quickstart_code() -> str:
    """The first ```python block after the README's "## Quickstart" heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    assert blocks, "the README's Quickstart section has no python block"
    return blocks[0]


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_quickstart_is_about_fifteen_lines():
    lines = [line for line in quickstart_code().splitlines() if line.strip()]
    assert 8 <= len(lines) <= 20, len(lines)


def test_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    # The README runs from the repository root; here from an empty folder that sees the repository's configs.
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart_code(), "README.md (Quickstart)", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out

    out = tmp_path / "outputs" / "quickstart"
    assert (out / "README.md").is_file() and (out / "metrics.json").is_file()
    assert "(1.0, 0.0, 0.0, 0.0)" in printed  # the concept's direction, as the comment says
    # The latent of pure red is close to (1, 0, 0, 0) (the default recipe, seed 0: cos 0.996 in metrics.json).
    latents = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", printed.split("tensor(", 2)[1])[:4]]
    assert len(latents) == 4 and latents[0] >= 0.98, printed
    # Suppression changed the reconstruction of red: it is no longer red.
    recon = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", printed.split("tensor(", 2)[2])[:3]]
    assert len(recon) == 3 and np.linalg.norm(np.subtract(recon, [1.0, 0.0, 0.0])) > 0.3, printed
    pruned = json.loads((tmp_path / "outputs" / "quickstart-no-red" / "config.json").read_text())
    assert pruned["bottleneck_dim"] == 3 and "red" not in [c["name"] for c in pruned["concepts"]]
