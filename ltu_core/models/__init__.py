"""timm models with a small-image stem and width option, stored as safetensors."""

from ltu_core.models.factory import (
    ArchConfig,
    build_model,
    count_parameters,
    load_model,
    read_checkpoint,
    save_model,
)
from ltu_core.models.inference import Posteriors, predict, predict_split

__all__ = [
    "ArchConfig",
    "Posteriors",
    "build_model",
    "count_parameters",
    "load_model",
    "predict",
    "predict_split",
    "read_checkpoint",
    "save_model",
]
