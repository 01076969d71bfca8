"""Models (torch only, no file I/O): coordinate grids, generators, group convolutions, the models, a registry."""

from emgroup.models.registry import MODELS, build_model, model_class

__all__ = ["MODELS", "build_model", "model_class"]
