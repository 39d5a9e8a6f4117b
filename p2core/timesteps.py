"""How training draws its timesteps: a distribution ``p(t)`` over the ``T`` steps of the chain and the loss factor
``c_t`` that comes with it, the second lever beside the weighting (:mod:`p2core.weighting`): the eps-MSE of a sample
drawn at ``t`` is multiplied by ``w_t * c_t``.

A weighting ``w`` under the uniform draw, and the draw ``p(t) = w_t / sum(w)`` with the constant factor
``c = mean(w)`` and no weighting, have the same expected loss, hence the same expected gradient, for any model::

    E_uniform[w_t l_t] = (1/T) sum_t w_t l_t = sum_t (w_t / sum(w)) mean(w) l_t = E_p[c l_t]

but not the same variance: the draw spends the batch where the weight is, where a uniform draw spends part of it on
steps whose weight is nearly zero (P2's last steps). The equality holds for the eps-MSE, the term every weighting
acts on. The VLB term of a learned-sigma model (it trains the variance channels only) is drawn at the same ``t``
without a correction: making its expectation uniform would multiply it by ``1 / (T p(t))``, up to 10^4 on P2's
clean steps and far more at the ends of a logit-normal draw, so its rare draws would be gradient spikes.

================  =============================================================  =============  ====================
name              ``p(t)``                                                       ``c_t``        source
================  =============================================================  =============  ====================
``uniform``       ``1 / T``                                                      ``1``          DDPM, ADM (default)
``importance``    ``w_t / sum(w)``, ``w`` a weighting of :mod:`p2core.weighting`  ``mean(w)``    importance sampling
                                                                                                of the weighted loss
``logit_normal``  the mass of ``[t/T, (t+1)/T)`` under ``sigmoid(N(m, s^2))``    ``1``          Esser et al. 2024
                                                                                                (SD3), its
                                                                                                continuous time
                                                                                                mapped to the chain
================  =============================================================  =============  ====================

A new draw is one function ``f(alphas_cumprod: np.ndarray, **params) -> TimestepDraw`` decorated with
``@register("name")``; a config names it ``timesteps: name`` or ``timesteps: {name: {param: value, ...}}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from p2core.weighting import loss_weights

if TYPE_CHECKING:
    import torch

UNIFORM = "uniform"


@dataclass(frozen=True)
class TimestepDraw:
    """A distribution over timesteps and its loss factor.

    ``probabilities``: ``p(t)``, shape ``(T,)``, summing to 1; None for the uniform draw, which keeps
    ``torch.randint`` (the draw of every run before this module: a uniform run's random stream is unchanged).
    ``correction``: ``c_t``, shape ``(T,)``, multiplied into the eps-MSE of a sample drawn at ``t``.
    """

    probabilities: np.ndarray | None
    correction: np.ndarray

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``batch`` timesteps, shape ``(batch,)`` long, on the CPU."""
        import torch  # here, not at the top: the config check reads this module without torch

        if self.probabilities is None:
            return torch.randint(len(self.correction), (batch,), generator=generator)
        probabilities = torch.as_tensor(self.probabilities, dtype=torch.float64)
        return torch.multinomial(probabilities, batch, replacement=True, generator=generator)


DrawFn = Callable[..., TimestepDraw]
TIMESTEP_DRAWS: dict[str, DrawFn] = {}


def register(name: str) -> Callable[[DrawFn], DrawFn]:
    """Add a timestep draw to the registry under ``name``."""

    def add(fn: DrawFn) -> DrawFn:
        TIMESTEP_DRAWS[name] = fn
        return fn

    return add


@register("uniform")
def uniform(alphas_cumprod: np.ndarray) -> TimestepDraw:
    """Every step equally often, no factor."""
    return TimestepDraw(None, np.ones(len(alphas_cumprod)))


@register("importance")
def importance(alphas_cumprod: np.ndarray, weighting: str = "p2", weighting_params: dict | None = None) -> TimestepDraw:
    """``weighting`` as a distribution: ``p(t)`` proportional to its weight, times the mean weight, so that the
    expected loss is that of the weighted loss under a uniform draw."""
    weights = loss_weights(weighting, alphas_cumprod, **(weighting_params or {}))
    return TimestepDraw(weights / weights.sum(), np.full(len(weights), weights.mean()))


@register("logit_normal")
def logit_normal(alphas_cumprod: np.ndarray, mean: float = 0.0, std: float = 1.0) -> TimestepDraw:
    """SD3's logit-normal draw of continuous time ``u = sigmoid(n)``, ``n ~ N(mean, std^2)``, on the chain: step ``t``
    gets the mass of ``u`` in ``[t/T, (t+1)/T)`` (``t = T - 1`` the noisiest). No factor: the draw is the weighting."""
    if std <= 0:
        raise ValueError(f"logit_normal timesteps need std > 0, got {std}")
    edges = np.linspace(0.0, 1.0, len(alphas_cumprod) + 1)
    with np.errstate(divide="ignore"):
        logits = np.log(edges) - np.log1p(-edges)  # -inf and +inf at the ends
    cdf = np.array([0.5 * math.erfc(-(x - mean) / (std * math.sqrt(2.0))) for x in logits])
    mass = np.diff(cdf)
    return TimestepDraw(mass / mass.sum(), np.ones(len(mass)))


def timestep_draw(setting: str | dict, alphas_cumprod: np.ndarray) -> TimestepDraw:
    """The draw a config or spec names: ``"uniform"``, or ``{name: {params}}`` with one key. A ``ValueError`` names
    an unknown draw or a bad parameter."""
    name, params = draw_name(setting), ({} if isinstance(setting, str) else dict(next(iter(setting.values())) or {}))
    if name not in TIMESTEP_DRAWS:
        raise ValueError(f"unknown timesteps '{name}'; known: {', '.join(TIMESTEP_DRAWS)}")
    try:
        return TIMESTEP_DRAWS[name](np.asarray(alphas_cumprod, dtype=np.float64), **params)
    except TypeError as exc:
        raise ValueError(f"timesteps '{name}': {exc}") from None


def describe(setting: str | dict) -> str:
    """A ``timesteps`` setting in words for tables: ``importance p2 gamma=1.0 k=1.0``, ``logit_normal mean=0.0
    std=1.0``, ``uniform``."""
    if isinstance(setting, str):
        return setting
    words = [draw_name(setting)]
    for key, value in (next(iter(setting.values())) or {}).items():
        if isinstance(value, dict):
            words += [f"{k}={v}" for k, v in value.items()]
        else:
            words.append(str(value) if key == "weighting" else f"{key}={value}")
    return " ".join(words)


def draw_weightings(setting: str | dict) -> list[str]:
    """The weightings of :mod:`p2core.weighting` a ``timesteps`` setting draws by (``importance``'s), in order."""
    params = {} if isinstance(setting, str) else next(iter(setting.values())) or {}
    return [params["weighting"]] if "weighting" in params else []


def draw_name(setting: str | dict) -> str:
    """The registry name of a ``timesteps`` setting."""
    if isinstance(setting, str):
        return setting
    if not isinstance(setting, dict) or len(setting) != 1:
        raise ValueError(f"timesteps must be a name or {{name: {{params}}}} with one name, got {setting!r}")
    return next(iter(setting))
