"""Model code: image towers, text towers and the two-tower model. No Ray, no torch.distributed."""
from pipeline.models.two_tower import TwoTower, build_model

__all__ = ["TwoTower", "build_model"]
