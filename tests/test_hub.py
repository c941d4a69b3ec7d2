"""Hub round trips against the local Hub-protocol server (tests/hub_server.py): push, pull, datasets, cards, tokens."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModel

import structured_hf  # noqa: F401  (registers the Auto classes)
from structured_hf.data import NAMED_COLORS, build_color_dataset, parse_labelers, rgb_grid
from structured_hf.errors import HubPushError, StructuredConfigError
from structured_hf.experiment import run_experiment
from structured_hf.hub import (
    files_to_push,
    load_hub_dataset,
    pull,
    push_dataset,
    push_output_dir,
    remote_code_files,
    render_color_model_card,
    render_model_card_from_folder,
)
from structured_hf.interventions import prune
from structured_hf.training.recipe import build_datasets, parse_recipe

from conftest import FAKE_HUB_TOKEN, load_script, tiny_recipe_dict

REPO = Path(__file__).resolve().parent.parent
PROBE = np.concatenate([rgb_grid(5), np.asarray(list(NAMED_COLORS.values()))]).astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real (tiny: 4 steps) output folder of run_experiment, figures and card included."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_experiment(parse_recipe(tiny_recipe_dict(str(out))), animation=False)
    return out


def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(colors=torch.from_numpy(PROBE))
    return out.reconstruction, out.latents


def _assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for x, y in zip(_outputs(a), _outputs(b)):
        assert x.dtype == y.dtype and torch.equal(x, y)  # bitwise: equal values, no tolerance


def test_push_then_pull_restores_the_run_bit_identically(local_hub, run_dir):
    info = push_output_dir(run_dir, "color-ae", token=local_hub.token)
    repo_id = info.repo_url.repo_id
    assert repo_id == "tester/color-ae"  # bare names go to the token's namespace

    remote = local_hub.files(repo_id)
    pushed = files_to_push(run_dir)
    assert set(pushed) >= {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "metrics.json",
        "log_history.json",
        "latents.png",
        "training_curves.png",
        "README.md",
    }
    assert (run_dir / "training_args.bin").is_file() and "training_args.bin" not in remote
    code, _ = remote_code_files("structured_color_autoencoder")  # the model's source and what it imports from us
    assert {"configuration_color_autoencoder.py", "modeling_color_autoencoder.py", "concepts.py"} <= set(code)
    assert set(remote) == set(pushed) | set(code) | {".gitattributes"}
    assert local_hub.is_lfs(repo_id, "model.safetensors") and local_hub.is_lfs(repo_id, "latents.png")
    assert not local_hub.is_lfs(repo_id, "config.json")

    folder = pull(repo_id)
    for rel in pushed:
        if rel not in ("README.md", "config.json"):  # those two are rewritten for the Hub, see below
            assert (folder / rel).read_bytes() == (run_dir / rel).read_bytes(), rel
    config, original = (json.loads((d / "config.json").read_text()) for d in (folder, run_dir))
    assert config.pop("auto_map") == {
        "AutoConfig": "configuration_color_autoencoder.ColorAutoencoderConfig",
        "AutoModel": "modeling_color_autoencoder.ColorAutoencoderModel",
    }
    assert config == original  # same concept map and hyperparameters
    card = (folder / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{repo_id}")' in card and "trust_remote_code=True" in card

    model = AutoModel.from_pretrained(run_dir)
    _assert_bit_identical(model, AutoModel.from_pretrained(folder))
    # from_pretrained takes the Hub id directly too (structured_hf's registered class, not the remote code).
    from_hub = AutoModel.from_pretrained(repo_id)
    assert type(from_hub) is type(model)
    _assert_bit_identical(model, from_hub)
    assert pull(run_dir) == run_dir  # a folder is its own pull
    assert not local_hub.unhandled


def test_labelled_dataset_round_trip_is_bit_identical(local_hub, tmp_path):
    """The recipe's own datasets (weak-label probabilities for training, exact labels for evaluation) as one
    DatasetDict, and a sample-weighted Dataset, pushed with `datasets`' push_to_hub and loaded with load_dataset."""
    train, eval_ds = build_datasets(parse_recipe(tiny_recipe_dict(str(tmp_path / "r"))))
    labelers = parse_labelers({"red": {"scale": 0.08, "power": 8.0}, "vibrant": {"scale": 0.1, "power": 10.0}})
    weighted = build_color_dataset(rgb_grid(6), labelers, sample_weights=np.linspace(0.1, 1.0, 216))
    assert "sample_weight" in weighted.column_names
    push_dataset(datasets.DatasetDict(train=train, eval=eval_ds), "colors-labelled", token=local_hub.token)
    push_dataset(weighted, "colors-weighted", token=local_hub.token)
    assert sum(p.endswith(".parquet") for p in local_hub.files("tester/colors-labelled", "dataset")) == 2

    loaded = load_hub_dataset("tester/colors-labelled", cache_dir=tmp_path / "ds_cache")
    assert set(loaded) == {"train", "eval"}
    pairs = {
        "train": (train, loaded["train"]),
        "eval": (eval_ds, loaded["eval"]),
        "weighted": (
            weighted,
            load_hub_dataset("tester/colors-weighted", split="train", cache_dir=tmp_path / "ds_cache"),
        ),
    }
    for split, (ds, pulled) in pairs.items():
        assert pulled.features == ds.features and pulled.num_rows == ds.num_rows, split
        a, b = ds.with_format("numpy")[:], pulled.with_format("numpy")[:]
        for column in ds.column_names:
            assert a[column].dtype == b[column].dtype == np.float32, (split, column)
            assert np.array_equal(a[column].view(np.uint32), b[column].view(np.uint32)), (split, column)  # bitwise
        assert pulled.data.table.equals(ds.data.table), split
    assert not local_hub.unhandled


def _grep(roots: list[Path], needle: bytes) -> list[str]:
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path))
    return hits


def test_hub_token_never_appears_in_logs_or_saved_files(local_hub, tmp_path, capfd):
    assert local_hub.token == FAKE_HUB_TOKEN == "hf_test_SECRET123"
    secret = local_hub.token.encode()
    # Everything logs at DEBUG into one buffer: our logger, huggingface_hub, transformers, datasets, the HTTP client.
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    loggers = [
        logging.getLogger(name)
        for name in (
            "",
            "structured_hf",
            "huggingface_hub",
            "transformers",
            "datasets",
            "httpx2",
            "httpcore2",
            "filelock",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    try:
        # The train script's --push_to_hub path; the token comes from HF_TOKEN (set by the fixture).
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump(tiny_recipe_dict(str(tmp_path / "run"))))
        train = load_script("train")
        out = tmp_path / "secret-run"
        assert (
            train.main(
                [
                    str(config),
                    "--output_dir",
                    str(out),
                    "--no_figures",
                    "--push_to_hub",
                    "--hub_model_id",
                    "secret-check",
                ]
            )
            == 0
        )
        folder = pull("tester/secret-check", local_dir=tmp_path / "pulled")
        # And a dataset pushed with an explicit token.
        ds = build_color_dataset(rgb_grid(3), parse_labelers({"red": {"scale": 0.5, "power": 2.0}}))
        push_dataset(ds, "secret-data", token=local_hub.token)
        load_hub_dataset("tester/secret-data", split="train", cache_dir=tmp_path / "ds_cache")
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    captured = capfd.readouterr()

    assert local_hub.tokens_seen > 0, "the token was never sent: this test would prove nothing"
    assert "pushed to" in captured.out and "/_lfs/upload/" in buffer.getvalue()  # the logs did capture the push
    for name, text in (("logs", buffer.getvalue()), ("stdout", captured.out), ("stderr", captured.err)):
        assert local_hub.token not in text, name
    # Every file written: the run (pickled training_args.bin included), the pulled folder, the dataset cache and
    # the fixture's HF_HOME (Hub cache), all under tmp_path.
    assert (out / "training_args.bin").is_file() and folder.is_relative_to(tmp_path)
    assert Path(huggingface_hub.constants.HF_HOME).is_relative_to(tmp_path)
    assert _grep([tmp_path], secret) == []
    # The scan is not blind: a planted copy is found.
    (tmp_path / "planted.txt").write_bytes(b"x" + secret + b"y")
    assert _grep([tmp_path], secret) == [str(tmp_path / "planted.txt")]


def test_push_refuses_a_file_that_holds_the_token(local_hub, run_dir, tmp_path):
    folder = tmp_path / "leaky"
    shutil.copytree(run_dir, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["note"] = f"token={local_hub.token}"
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(HubPushError, match="metrics.json: contains the Hub token"):
        push_output_dir(folder, "leaky", token=local_hub.token)
    assert ("model", "tester/leaky") not in local_hub.repos  # refused before anything was created


@pytest.mark.parametrize("where", ["recipe.yaml", "figures/notes.svg"])
def test_push_refuses_anything_shaped_like_a_hub_token(local_hub, run_dir, tmp_path, where):
    """Not only the active token: any `hf_` + 30 or more letters/digits (someone else's token, a pasted one) is
    refused before the repo is created, and the error names the file but never echoes the token."""
    folder = tmp_path / "leaky-other"
    shutil.copytree(run_dir, folder)
    other = "hf_" + "aB3" * 11  # 33 letters and digits: shaped like a real token, and not the active one
    assert other != local_hub.token
    path = folder / where
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(f"\n# pasted by mistake: {other}\n")
    with pytest.raises(HubPushError, match=rf"^{where}: contains something shaped like a Hub token") as err:
        push_output_dir(folder, "leaky-other", token=local_hub.token)
    assert other not in str(err.value)
    assert ("model", "tester/leaky-other") not in local_hub.repos
    # A shorter "hf_" word is not a token: the same folder without the long one uploads.
    path.write_text(path.read_text().replace(other, "hf_short_name"))
    push_output_dir(folder, "leaky-other", token=local_hub.token)
    assert ("model", "tester/leaky-other") in local_hub.repos


def test_files_to_push_is_an_allow_list(tmp_path):
    for rel in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "interventions/suppress_red.json",
        "evaluation.json",
        "evaluation.md",
        "metrics.json",
        "figures/x.png",
        "README.md",
        "models/ablate_red/config.json",
        "models/ablate_red/model.safetensors",
        # never: Trainer state, checkpoints, TensorBoard runs, caches, anything not on the list
        "training_args.bin",
        "checkpoint-2/model.safetensors",
        "checkpoint-2/trainer_state.json",
        "runs/Nov25/events.out.tfevents.1",
        "optimizer.pt",
        "notes.txt",
        ".cache/x.json",
        "secrets.env",
        "sub/deeper/latents.png",
        "models/ablate_red/training_args.bin",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    assert files_to_push(tmp_path) == [
        "README.md",
        "config.json",
        "evaluation.json",
        "evaluation.md",
        "figures/x.png",
        "interventions/suppress_red.json",
        "metrics.json",
        "model.safetensors",
        "models/ablate_red/config.json",
        "models/ablate_red/model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.parametrize("key", ["hub_token", "push_to_hub", "hub_model_id"])
def test_recipe_rejects_hub_options(tmp_path, key):
    raw = tiny_recipe_dict(str(tmp_path / "r"))
    raw["training"][key] = "hf_abc" if key == "hub_token" else True
    with pytest.raises(StructuredConfigError, match=f"training.{key}: Hub options are not recipe fields"):
        parse_recipe(raw)


def test_remote_code_loads_without_structured_hf(local_hub, run_dir, tmp_path):
    """The path for users without structured_hf: bundled code + auto_map, `trust_remote_code=True`."""
    push_output_dir(run_dir, "remote", token=local_hub.token)
    np.save(tmp_path / "probe.npy", PROBE)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from hub_server import install_network_guard
        blocked = install_network_guard()              # loopback only, in this process too
        sys.modules["structured_hf"] = None          # importing structured_hf now raises ImportError
        import numpy as np, torch
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained("tester/remote", trust_remote_code=False)
            raise SystemExit("loaded without trust_remote_code")
        except ValueError as e:
            assert "trust_remote_code" in str(e), e
        model = AutoModel.from_pretrained("tester/remote", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert model.concept_map["red"].direction == (1.0, 0.0, 0.0, 0.0)
        with torch.no_grad():
            out = model(colors=torch.from_numpy(np.load({str(tmp_path / "probe.npy")!r})))
        torch.save({{"reconstruction": out.reconstruction, "latents": out.latents}}, {str(tmp_path / "out.pt")!r})
        assert not blocked, blocked
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    reconstruction, latents = _outputs(AutoModel.from_pretrained(run_dir))
    assert torch.equal(remote["reconstruction"], reconstruction) and torch.equal(remote["latents"], latents)
    assert local_hub.token not in proc.stdout + proc.stderr


def test_model_card_renders_its_tables(run_dir):
    recipe = parse_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = render_color_model_card(recipe, metrics, "tester/color-ae", dataset_ids=["tester/colors-labelled"])
    data = card.data.to_dict()
    assert data["library_name"] == "structured_hf" and data["license"] == "mit"
    assert "concept-anchoring" in data["tags"] and data["datasets"] == ["tester/colors-labelled"]
    text = str(card)
    assert ModelCard(text).data.library_name == "structured_hf"  # the front matter parses back
    assert "| red | `bottleneck` | direction (1, 0, 0, 0) | red |" in text
    assert "| hue | `bottleneck` | plane of axes 0, 1 | red, green, blue |" in text
    for name, mse in metrics["named_color_mse"].items():
        assert f"| {name} | {mse:.3g} |" in text, name
    assert "| anchor-red | `angular_anchor` | red | red | `bottleneck` | 0.1 |" in text
    assert "| learning_rate | linear (0: 0.01, 4: 0.001) |" in text
    assert "| `red` | 0.5 · redness^2 |" in text
    for figure in ("training_curves.png", "latents.png"):
        assert f"]({figure})" in text and (run_dir / figure).is_file()
    assert "## Intended use and limitations" in text
    assert "trust_remote_code" not in text  # only cards of repos with bundled code mention it
    # The local card written by run_experiment is the same template.
    assert "| red | `bottleneck` |" in (run_dir / "README.md").read_text()


def test_card_place_of_a_wide_direction_names_its_nonzero_axes():
    """A residual-stream concept (64-128 entries) is shown by the entries that matter, a color latent whole."""
    from structured_hf.cards.common import place_text
    from structured_hf.concepts import ConceptMap

    concepts = ConceptMap.parse(
        [
            {"name": "one", "site": "s", "direction": {"one_hot": 5, "width": 64}},
            {"name": "four", "site": "s", "direction": {"one_hot": [0, 1, 2, 3], "width": 128}},
            {"name": "dense", "site": "s", "direction": [1.0] * 16},
            {"name": "short", "site": "s", "direction": [0.0, 1.0, 0.0, 0.0]},
        ]
    )
    assert place_text(concepts["one"]) == "axis 5 of 64 (one-hot)"
    assert place_text(concepts["four"]) == "direction of width 128, nonzero on axes {0: 1, 1: 1, 2: 1, 3: 1}"
    assert place_text(concepts["dense"]) == "direction of width 16 (16 nonzero entries)"
    assert place_text(concepts["short"]) == "direction (0, 1, 0, 0)"


def test_folder_card_reads_the_concept_map_from_the_saved_config(run_dir, tmp_path):
    """After surgery the recipe still names the concepts the model was trained with; the card shows the model's."""
    folder = tmp_path / "pruned"
    shutil.copytree(run_dir, folder)
    prune(AutoModel.from_pretrained(run_dir), "red").save_pretrained(folder)
    text = str(render_model_card_from_folder(folder, "tester/pruned"))
    assert "| red | `bottleneck` |" not in text
    assert "| hue | `bottleneck` | axes [0] | red, green, blue |" in text
    assert "red" in (folder / "recipe.yaml").read_text()  # the stale source the card no longer reads


def test_network_guard_refuses_everything_but_loopback(local_hub):
    import socket

    with pytest.raises(OSError, match="test network guard"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="test network guard"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed anyway
    assert local_hub.blocked == ["getaddrinfo('huggingface.co')", "connect(('192.0.2.1', 443))"]
    local_hub.blocked.clear()  # expected here; any other test that leaves an entry fails at teardown


# ---- the color transformer and StructuredGPT with its tokenizer -------------------------------------------------
# A few verses of the KJV (public domain), enough to train a tiny byte-level BPE.
VERSES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    (
        "And Cain talked with Abel his brother: and it came to pass, when they were in the field, that Cain rose up "
        "against Abel his brother, and slew him."
    ),
]
PROBE_TEXTS = ["And God said, Let there be light.", "Unseen words: zebra, quartz & 42!", "  spaces\tand\nlines  "]


def _tiny_transformer():
    from structured_hf.models import ColorTransformerConfig, ColorTransformerModel

    torch.manual_seed(0)
    site = "layers.1.residual_post"
    config = ColorTransformerConfig(
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        concepts=[
            {"name": "red", "site": site, "direction": [1.0] + [0.0] * 15},
            {"name": "red-axis", "site": site, "axes": [0]},
        ],
    )
    return ColorTransformerModel(config).eval()


def _transformer_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "op_ids": torch.randint(0, 4, (16,), generator=g),
        "colors": torch.rand(16, 2, 3, generator=g),
        "operand_mask": torch.ones(16, 2),
    }


def _gpt_output_dir(folder: Path) -> Path:
    """A StructuredGPT output folder as a run leaves it: safetensors weights, config with the concept map, and the
    BPE tokenizer it was trained with."""
    from structured_hf.data.tokenizer import train_bpe_tokenizer
    from structured_hf.models import StructuredGPTConfig, StructuredGPTForCausalLM

    tokenizer = train_bpe_tokenizer(VERSES * 3, vocab_size=300, min_frequency=1, model_max_length=32)
    site = "layers.1.residual_post"
    torch.manual_seed(0)
    model = StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=32,
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            concepts=[{"name": "violence", "site": site, "direction": [1.0] + [0.0] * 15}],
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _gpt_logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_color_transformer_round_trip_is_bit_identical(local_hub, tmp_path):
    model = _tiny_transformer()
    model.save_pretrained(tmp_path / "ct")
    push_output_dir(tmp_path / "ct", "color-tf", token=local_hub.token)
    assert {"modeling_color_transformer.py", "configuration_color_transformer.py", "layers.py"} <= set(
        local_hub.files("tester/color-tf")
    )
    pulled = pull("tester/color-tf", local_dir=tmp_path / "pulled")
    for loaded in (AutoModel.from_pretrained(pulled), AutoModel.from_pretrained("tester/color-tf")):
        assert type(loaded) is type(model) and loaded.config.concepts == model.config.concepts
        sa, sb = model.state_dict(), loaded.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        with torch.no_grad():
            a, b = model(**_transformer_inputs()), loaded.eval()(**_transformer_inputs())
        assert torch.equal(a.prediction, b.prediction) and torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert not local_hub.unhandled


def test_gpt_with_tokenizer_round_trip_is_bit_identical(local_hub, tmp_path, capfd):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gpt_output_dir(tmp_path / "gpt")
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files_to_push(folder))
    push_output_dir(folder, "tiny-gpt", token=local_hub.token)
    remote = local_hub.files("tester/tiny-gpt")
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors", "modeling_structured_gpt.py"} <= set(remote)
    config = json.loads((pull("tester/tiny-gpt", local_dir=tmp_path / "pulled") / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_structured_gpt.StructuredGPTConfig",
        "AutoModel": "modeling_structured_gpt.StructuredGPTForCausalLM",
        "AutoModelForCausalLM": "modeling_structured_gpt.StructuredGPTForCausalLM",
    }

    original = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = _gpt_logits(original, tokenizer)
    for source in (tmp_path / "pulled", "tester/tiny-gpt"):  # a pulled folder and the Hub id itself
        model = AutoModelForCausalLM.from_pretrained(source)
        pulled_tokenizer = AutoTokenizer.from_pretrained(source)
        assert type(model) is type(original) and model.config.concepts == original.config.concepts
        for text in PROBE_TEXTS:
            ids = pulled_tokenizer(text)["input_ids"]
            assert ids == tokenizer(text)["input_ids"] and ids[0] == tokenizer.bos_token_id
            assert pulled_tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: exact round trip
        assert (pulled_tokenizer.bos_token, pulled_tokenizer.eos_token, pulled_tokenizer.pad_token) == (
            tokenizer.bos_token,
            tokenizer.eos_token,
            tokenizer.pad_token,
        )
        logits = _gpt_logits(model, pulled_tokenizer)
        assert logits.dtype == expected.dtype and torch.equal(logits, expected)  # bitwise
        generated = model.generate(**tokenizer(PROBE_TEXTS[:1], return_tensors="pt"), max_new_tokens=5, do_sample=False)
        assert torch.equal(
            generated,
            original.generate(**tokenizer(PROBE_TEXTS[:1], return_tensors="pt"), max_new_tokens=5, do_sample=False),
        )
    # The token was used (the server checks it) but is in no file written and in no output.
    captured = capfd.readouterr()
    assert local_hub.tokens_seen > 0 and local_hub.token not in captured.out + captured.err
    assert _grep([tmp_path], local_hub.token.encode()) == []
    assert not local_hub.unhandled


def test_transformer_and_gpt_remote_code_load_without_structured_hf(local_hub, tmp_path):
    """The trust_remote_code path for the two transformer families: bundled code + auto_map, no structured_hf."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _tiny_transformer()
    model.save_pretrained(tmp_path / "ct")
    push_output_dir(tmp_path / "ct", "remote-tf", token=local_hub.token)
    push_output_dir(_gpt_output_dir(tmp_path / "gpt"), "remote-gpt", token=local_hub.token)
    torch.save(_transformer_inputs(), tmp_path / "ct_inputs.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from hub_server import install_network_guard
        blocked = install_network_guard()
        sys.modules["structured_hf"] = None          # importing structured_hf now raises ImportError
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        ct = AutoModel.from_pretrained("tester/remote-tf", trust_remote_code=True).eval()
        gpt = AutoModelForCausalLM.from_pretrained("tester/remote-gpt", trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained("tester/remote-gpt")
        for m in (ct, gpt):
            assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        batch = tok({PROBE_TEXTS!r}, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = {{"prediction": ct(**torch.load({str(tmp_path / "ct_inputs.pt")!r})).prediction,
                    "logits": gpt(batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                    "ids": batch["input_ids"]}}
        torch.save(out, {str(tmp_path / "out.pt")!r})
        assert not blocked, blocked
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(remote["prediction"], model(**_transformer_inputs()).prediction)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gpt")
    assert torch.equal(remote["ids"], tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True)["input_ids"])
    assert torch.equal(remote["logits"], _gpt_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt"), tokenizer))
    assert local_hub.token not in proc.stdout + proc.stderr
