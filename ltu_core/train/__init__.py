"""One seeded training recipe for the original model and for Retrain."""

from ltu_core.train.recipe import Progress, TrainRecipe, never_cancel, no_progress, train_model

__all__ = ["Progress", "TrainRecipe", "never_cancel", "no_progress", "train_model"]
