"""p2core: a small PyTorch library for Perception Prioritized (P2) training of diffusion models.

Where P2 enters the loss: :mod:`p2core.weighting` (the weight) and
:meth:`p2core.objective.Objective.losses` (where it multiplies the eps-MSE term).
"""

__version__ = "0.1.0"
