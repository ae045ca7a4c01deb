from .checkpoints import TrainingCheckpointer, latest_checkpoint
from .class_dice import PerClassDice
from .distributed import EVERY_RANK_HANDLERS, rank_zero_handlers
from .handlers import GradientClipping, LrLogger, NonFiniteLossGuard
from .optim import build_optimizer
from .overlay import ValidationOverlay
from .plot import ProgressPlot, plot_progress
from .progress import TrainingLog, load_history
from .recipe import (
    Recipe,
    augmentation_transforms,
    crop_sampler,
    default_num_workers,
    default_recipe,
    get_recipe,
    list_recipes,
    recipe_loss,
    recipe_optimizer,
    recipe_scheduler,
    register_recipe,
    training_plan,
)

__all__ = [
    "build_optimizer",
    "latest_checkpoint",
    "TrainingCheckpointer",
    "LrLogger",
    "GradientClipping",
    "Recipe",
    "register_recipe",
    "get_recipe",
    "list_recipes",
    "default_recipe",
    "training_plan",
    "recipe_optimizer",
    "recipe_scheduler",
    "recipe_loss",
    "crop_sampler",
    "augmentation_transforms",
    "default_num_workers",
    "NonFiniteLossGuard",
    "EVERY_RANK_HANDLERS",
    "rank_zero_handlers",
    "PerClassDice",
    "TrainingLog",
    "load_history",
    "ProgressPlot",
    "plot_progress",
    "ValidationOverlay",
]
