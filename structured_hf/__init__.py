"""structured_hf: concept-anchored representation engineering for HuggingFace transformers.

Importing the package registers its models with the transformers Auto classes, so
``AutoModel.from_pretrained(folder)`` works without ``trust_remote_code``.

What users call is named in ``__all__``: the three model families and their configs, the concept map and sites,
``AnchoredTrainer`` / ``AnchoredTrainingArguments``, the interventions and surgery, and recipe loading
(``load_recipe`` -> ``run_experiment``). Everything else stays importable by its module path.
"""

from .checkpoints import check_checkpoint, load_pretrained
from .concepts import ConceptMap, ConceptSpec
from .errors import CheckpointError, NonFiniteLossError, StructuredConfigError
from .experiment import run_experiment
from .interventions import (
    InterventionSpec,
    SurgerySpec,
    ablate,
    intervene,
    project_out,
    prune,
    repel,
    suppress,
    suppress_axes,
)
from .models import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    ColorTransformerConfig,
    ColorTransformerModel,
    StructuredGPTConfig,
    StructuredGPTForCausalLM,
)
from .pretrained import attach_sites
from .sites import ActivationSite, capture, get_sites, rewrite, site_dims
from .training import AnchoredTrainer, AnchoredTrainingArguments, load_recipe
from .version import __version__
from . import families  # noqa: E402,F401  (registers every model family: structured_hf.registry)

__all__ = [
    # models (registered with the Auto classes on import)
    "ColorAutoencoderConfig",
    "ColorAutoencoderModel",
    "ColorTransformerConfig",
    "ColorTransformerModel",
    "StructuredGPTConfig",
    "StructuredGPTForCausalLM",
    # the concept map and sites
    "ActivationSite",
    "ConceptMap",
    "ConceptSpec",
    "capture",
    "get_sites",
    "rewrite",
    "site_dims",
    # training
    "AnchoredTrainer",
    "AnchoredTrainingArguments",
    "load_recipe",
    "run_experiment",
    # interventions (inference time) and surgery (new weights)
    "InterventionSpec",
    "SurgerySpec",
    "ablate",
    "intervene",
    "project_out",
    "prune",
    "repel",
    "suppress",
    "suppress_axes",
    # checkpoints and errors
    "CheckpointError",
    "NonFiniteLossError",
    "StructuredConfigError",
    "check_checkpoint",
    "load_pretrained",
    "__version__",
]
__all__ += ["attach_sites"]
