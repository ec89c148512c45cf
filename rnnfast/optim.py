"""Optimizers (SGD, Adam, AdamW) with torch.optim's exact update equations, and learning-rate schedules
(StepLR, CosineAnnealingLR, ReduceLROnPlateau) as torch.optim.lr_scheduler defines them.

    opt = rnnfast.optim.Adam(model.parameters(), lr=1e-3)
    ...; model.backward(grad); opt.step(); opt.zero_grad()

Every optimizer updates ``p.data`` in place, has ``lr`` (read and written by the schedules), and
``state_dict()``/``load_state_dict()`` (a dict of plain values and arrays, copied both ways) for
checkpoints.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR", "ReduceLROnPlateau"]


def _number(name, value, low=0.0, high=math.inf, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not (low <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"Invalid {name} value: {value}")
    return float(value)


class Optimizer:
    """Base class: holds the parameters and per-parameter state (``self.state[i]``, a dict of arrays)."""

    def __init__(self, params, lr):
        if isinstance(params, Module):
            raise TypeError("params: expected an iterable of Parameters (model.parameters()), got a Module")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params: expected an iterable of Parameters, got {type(params).__name__}") from None
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}]: expected an rnnfast.Parameter, got {type(p).__name__}")
        self.params = params
        self.lr = _number("learning rate", lr)
        self.state = [dict() for _ in params]

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        for i, p in enumerate(self.params):
            self._update(p, self.state[i])

    def _hyper(self):
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        """{"hyper": {name: value}, "state": [{name: array or number} per parameter]}, copies."""
        return {"hyper": dict(self._hyper()),
                "state": [{k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state_dict):
        """Restores what state_dict() returned (checked against the parameters first)."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "hyper" not in state_dict:
            raise ValueError("state_dict: expected a dict with 'hyper' and 'state' (from Optimizer.state_dict())")
        states = state_dict["state"]
        if len(states) != len(self.params):
            raise ValueError(f"state_dict: holds state for {len(states)} parameters, this optimizer has "
                             f"{len(self.params)}")
        for i, (s, p) in enumerate(zip(states, self.params)):
            for k, v in s.items():
                if hasattr(v, "shape") and v.shape != p.data.shape:
                    raise ValueError(f"state_dict: state[{i}][{k!r}] has shape {v.shape}, the parameter {p.data.shape}")
        for k, v in state_dict["hyper"].items():
            setattr(self, k, v)
        self.state = [{k: (np.array(v, dtype=p.data.dtype) if hasattr(v, "shape") else v) for k, v in s.items()}
                      for s, p in zip(states, self.params)]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD):
    g = grad + weight_decay*p; b = g (first step) or momentum*b + (1-dampening)*g;
    g = g + momentum*b (nesterov) or b; p -= lr*g."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _update(self, p, state):
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (torch.optim.Adam, weight_decay as an L2 term added to the gradient):
    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    (amsgrad: v replaced by its running maximum)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        self.betas = (_number("beta parameter at index 0", betas[0], 0, 1, True),
                      _number("beta parameter at index 1", betas[1], 0, 1, True))
        self.eps = _number("epsilon", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _hyper(self):
        return {"lr": self.lr, "betas": tuple(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad}

    def _update(self, p, state):
        b1, b2 = self.betas
        g = p.grad
        if self.weight_decay:
            if self._decoupled:
                p.data *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (g - m) * (1 - b1)  # torch's lerp_
        v *= b2
        v += (1 - b2) * g * g
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        bias1, bias2 = 1 - b1 ** t, 1 - b2 ** t
        denom = np.sqrt(v) / math.sqrt(bias2) + self.eps
        p.data -= (self.lr / bias1) * (m / denom)


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, p *= 1 - lr*weight_decay before the
    Adam step (default weight_decay 1e-2)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# ============================================================================ schedules


class _Scheduler:
    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an rnnfast.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        vars(self).update(state_dict)

    def get_last_lr(self):
        return [self.optimizer.lr]


class StepLR(_Scheduler):
    """lr multiplied by gamma every step_size epochs (torch.optim.lr_scheduler.StepLR); call step() once
    per epoch."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _number("gamma", gamma)

    def step(self):
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            self.optimizer.lr *= self.gamma


class CosineAnnealingLR(_Scheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
    (torch.optim.lr_scheduler.CosineAnnealingLR's closed form); call step() once per epoch."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, numbers.Integral) or T_max < 1:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = _number("eta_min", eta_min)

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2


class ReduceLROnPlateau(_Scheduler):
    """lr multiplied by factor once the metric has not improved for more than patience epochs
    (torch.optim.lr_scheduler.ReduceLROnPlateau, same arguments and rules); call step(metric) per epoch."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        super().__init__(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown!")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown!")
        if not 0 <= factor < 1:
            raise ValueError("Factor should be < 1.0.")
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _better(self, a):
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (self.best * (1 - self.threshold) if rel else self.best - self.threshold)
        return a > (self.best * (1 + self.threshold) if rel else self.best + self.threshold)

    def step(self, metric):
        metric = float(metric)
        self.last_epoch += 1
        if self._better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new = max(self.optimizer.lr * self.factor, self.min_lr)
            if self.optimizer.lr - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
