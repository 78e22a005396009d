"""Models: one module per family, one registry, one factory (:func:`create_model`)."""

from medlite.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
