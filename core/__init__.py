"""The base layer: settings, the case model and readers, image and slide IO, errors, weights IO, embedders.

Imports nothing else of PathAsst (enforced by the layer contract in ``pyproject.toml``)."""
