"""Prediction over any source: :class:`Predictor` (batched, crash-isolated, checked by the
fidelity gate) and :func:`load`, the weights with their transform as a ready model."""

from ilgnet_cli.predict.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
