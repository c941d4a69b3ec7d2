"""StructuredGPT (M4); importing registers it with AutoConfig, AutoModelForCausalLM and AutoModel."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_structured_gpt import StructuredGPTConfig
from .modeling_structured_gpt import StructuredGPTForCausalLM

AutoConfig.register(StructuredGPTConfig.model_type, StructuredGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(StructuredGPTConfig, StructuredGPTForCausalLM, exist_ok=True)
AutoModel.register(StructuredGPTConfig, StructuredGPTForCausalLM, exist_ok=True)

__all__ = ["StructuredGPTConfig", "StructuredGPTForCausalLM"]
