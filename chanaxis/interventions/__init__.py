"""Interventions (METHOD §6–7): lesions with peer replacement, and FLOPs-matched pruning."""
from .lesion import lesion
from .prune import prune
from .scores import ALLOCATIONS, METHODS

__all__ = ["lesion", "prune", "METHODS", "ALLOCATIONS"]
