"""llavakit: build, train, evaluate and serve LLaVA-family multimodal models."""

from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.modeling import LlavaKitForCausalLM

__all__ = ["LlavaKitConfig", "LlavaKitForCausalLM"]
__version__ = "0.1.0"
