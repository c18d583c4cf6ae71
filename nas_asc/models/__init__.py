"""Model families, registered by name. Importing this package registers every family."""

from nas_asc.models import tfsepnet  # noqa: F401  (registers the family)
from nas_asc.models._registry import create_model, get_model_config, list_models, register_model

__all__ = ["create_model", "get_model_config", "list_models", "register_model"]
