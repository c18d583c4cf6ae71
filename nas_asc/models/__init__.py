"""Model families, registered by name. Importing this package registers every family."""

# Importing a family module registers it (``@register_model``).
from nas_asc.models import (  # noqa: F401
    bcres2net,
    bcresnet,
    blocks,
    bsconv,
    cnn,
    cpmobile,
    mobilenetv2_ca,
    tfsepnet,
)
from nas_asc.models._registry import (
    MODELS,
    create_model,
    get_model_config,
    get_model_revision,
    get_reference_input,
    list_models,
    register_model,
)

__all__ = [
    "MODELS",
    "create_model",
    "get_model_config",
    "get_model_revision",
    "get_reference_input",
    "list_models",
    "register_model",
]
