"""Model name -> class. `emgroup train --model NAME` and checkpoints use these names."""

import importlib

#: name -> "module:Class" inside emgroup.models (imported on first use)
MODELS = {
    "vae": "vae:VAE",
    "spatial": "spatial_vae:SpatialVAE",
    "target": "target_vae:TargetVAE",
    "masked": "masked:MaskedGroupAction",
}


def model_class(name: str):
    """The model class registered under ``name`` (KeyError if unknown)."""
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(f"emgroup.models.{module}"), cls)


def build_model(name: str, options: dict, box: int):
    """Instantiate model ``name`` for images of ``box`` pixels from a dict of options."""
    return model_class(name).from_config(options, box)
