"""The model registry service (``python -m services.model``)."""
