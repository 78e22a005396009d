"""Models: one module per family, one registry, one factory (:func:`create_model`)."""

import medlite.models.plain_cnn  # noqa: F401  (registers plain_cnn, tinyunet_classifier)
from medlite.models import sonic  # noqa: F401  (registers sonic and logit_backbone)
from medlite.models.profile import profile_model
from medlite.models.registry import create_model, list_models, register_model
from medlite.models.tinyunet import CMRF, TinyUNet
from medlite.models.unet import UNet

__all__ = [
    "CMRF",
    "TinyUNet",
    "UNet",
    "create_model",
    "list_models",
    "profile_model",
    "register_model",
]
