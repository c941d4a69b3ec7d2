"""Shared fixtures: tiny recipes and offline settings for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO


def tiny_recipe_dict(output_dir: str, max_steps: int = 4, **training) -> dict:
    """A small but complete recipe: red anchor + hue plane + repulsion on a 4³ grid."""
    return {
        "seed": 0,
        "output_dir": output_dir,
        "model": {
            "bottleneck_dim": 4,
            "hidden_dim": 8,
            "concepts": [
                {"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]},
                {"name": "hue", "site": "bottleneck", "axes": [0, 1], "prototypes": ["red", "green", "blue"]},
            ],
        },
        "data": {
            "train": {"grid": "rgb", "size": 4},
            "eval": {"grid": "rgb", "size": 3},
            "labels": {"red": {"scale": 0.5, "power": 2.0}, "vibrant": {"scale": 0.5, "power": 2.0}},
            "eval_labels": {"red": ["red"]},
        },
        "regularizers": [
            {"name": "anchor-red", "loss": "angular_anchor", "concept": "red", "label": "red", "weight": 0.1},
            {"name": "plane", "loss": "subspace", "concept": "hue", "label": "vibrant", "weight": 0.1},
            {"name": "separate", "loss": "angular_repulsion", "site": "bottleneck", "weight": 0.01},
        ],
        "schedules": {"learning_rate": {"interpolation": "linear", "keys": [[0, 1.0e-2], [max_steps, 1.0e-3]]}},
        "training": {
            "max_steps": max_steps,
            "per_device_train_batch_size": 16,
            "learning_rate": 1.0e-2,
            "sample_with_replacement": True,
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            "report_to": "none",
            **training,
        },
    }


@pytest.fixture
def tiny_recipe(tmp_path):
    return lambda **kw: tiny_recipe_dict(str(tmp_path / "run"), **kw)


# --- Local Hub (tests/hub_server.py) ----------------------------------------------------------------------------

FAKE_HUB_TOKEN = "hf_test_SECRET123"


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """A Hub-protocol server on 127.0.0.1 that `huggingface_hub`, `transformers` and `datasets` talk to.

    Why patch modules instead of only setting ``HF_ENDPOINT``: huggingface_hub reads its environment once, at import
    (``constants.ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``, the hub
    hosts and origins it trusts), and datasets keeps its own copies (``config.HF_ENDPOINT``, ``HUB_DATASETS_URL``,
    ``HF_HUB_OFFLINE``). By the time a fixture runs, every test module has imported them with this suite's offline
    settings, so the environment alone would be ignored in-process. The choices were: (a) run every round trip in a
    subprocess with the environment set (robust to new copies, but each child re-imports torch and transformers,
    5-15 s per call on this machine), or (b) patch the import-time copies in-process. We do (b), and make it safe:

    - every copy we know of is patched with ``monkeypatch`` (restored after the test), and the environment is set
      too (``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``, ``HF_TOKEN``, ``HF_HUB_OFFLINE=0``, ``HF_HOME``) so that
      subprocesses a test starts (scripts, a Python without structured_hf) get the same Hub;
    - a socket guard refuses any connection that is not to loopback and records it; the test fails at teardown if
      anything tried, so a copy of the endpoint we missed (a new library version) shows up as a failure, never as
      a silent request to huggingface.co;
    - a sanity check that ``hf_hub_url`` points at the server catches a missed template right away.
    """
    import socket

    import datasets.config
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.utils._http as hf_http
    import transformers.utils.hub as tf_hub
    from huggingface_hub import hf_hub_url
    from hub_server import LocalHub, network_guard

    hub = LocalHub(expected_token=FAKE_HUB_TOKEN).start()
    home = tmp_path / "hf_home"

    # Environment, for subprocesses.
    for key, value in {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": FAKE_HUB_TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    # huggingface_hub's import-time copies.
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_URL_HOSTS", hf_constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(hf_http, "_HUB_ORIGINS", hf_http._HUB_ORIGINS | {hf_http._url_origin(hub.url)})
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    # datasets' copies; no download counts (a HEAD to S3) and no parquet-export info (a datasets-server host).
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    # transformers keeps one shared HfApi whose endpoint is fixed when first created.
    monkeypatch.setattr(tf_hub, "_hf_api", None, raising=False)

    # Nothing but loopback, ever.
    guarded_getaddrinfo, guarded_connect = network_guard(hub.blocked)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)

    assert hf_hub_url("a/b", "f.json").startswith(hub.url), "huggingface_hub still resolves to another endpoint"
    try:
        yield hub
    finally:
        hub.stop()
    assert not hub.blocked, f"something tried to leave loopback: {hub.blocked}"
    assert not hub.cdn_requests_with_auth, "the Authorization header was sent to the CDN origin"


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts are not a package), to call its ``main``/``parse_args``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_help(entry, capsys, monkeypatch) -> tuple[str, list]:
    """Call a script's ``entry(["--help"])``; returns the printed help and every ArgumentParser that parsed (so a
    test can check each of their options). Fails unless ``--help`` exits with status 0."""
    import argparse

    import pytest

    parsers = []
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(
        argparse.ArgumentParser, "parse_args", lambda self, *a, **kw: parsers.append(self) or original(self, *a, **kw)
    )
    with pytest.raises(SystemExit) as exit_info:
        entry(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out, parsers


def assert_every_option_explained(parser, help_text: str, where: str = "") -> None:
    """Every option (and positional) of ``parser`` has a help text and appears in ``help_text``."""
    import argparse

    for action in parser._actions:
        name = (action.option_strings or [action.dest])[0]
        assert action.help and action.help != argparse.SUPPRESS, f"{where}{name} has no help"
        assert name in help_text, f"{where}{name} missing from --help"
