"""structured_hf: concept-anchored representation engineering for HuggingFace transformers.

Importing the package registers its models with the transformers Auto classes, so
``AutoModel.from_pretrained(folder)`` works without ``trust_remote_code``.
"""

from .checkpoints import check_checkpoint, load_pretrained
from .concepts import ConceptMap, ConceptSpec
from .errors import CheckpointError, NonFiniteLossError, StructuredConfigError
from .models import ColorAutoencoderConfig, ColorAutoencoderModel
from .sites import ActivationSite, capture, get_sites, rewrite, site_dims
from .interventions import InterventionSpec, ablate, intervene, prune, repel, suppress, suppress_axes

from .version import __version__

__all__ = [
    "ActivationSite", "CheckpointError", "ColorAutoencoderConfig", "ColorAutoencoderModel", "ConceptMap", "ConceptSpec",
    "NonFiniteLossError", "StructuredConfigError", "capture", "get_sites", "rewrite", "site_dims",
]
__all__ += ["InterventionSpec", "ablate", "intervene", "prune", "repel", "suppress", "suppress_axes"]
__all__ += ["check_checkpoint", "load_pretrained"]
