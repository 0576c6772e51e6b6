"""Live emotion web page and model server: ``python -m webapp --models saved_models/``."""
from __future__ import annotations

__all__ = ["create_app", "Settings"]


def __getattr__(name: str):
    # Lazy, so `import webapp.schemas` does not pull FastAPI + TensorFlow in.
    if name in __all__:
        from webapp import app

        return getattr(app, name)
    raise AttributeError(name)
