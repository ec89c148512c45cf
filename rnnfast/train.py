"""The training loop: ``fit`` (epochs of forward, loss, backward, clipping, optimizer step; validation,
early stopping, a progress bar, checkpoints that resume to the same result, truncated BPTT),
``evaluate`` and ``predict``.

The model is any ``rnnfast.Module`` with ``pred = model(x)`` (``model(x, lengths)`` when the data has
lengths) and ``model.backward(grad)``; the loss is a function ``loss(pred, target)`` returning
``(value, grad)``, e.g. ``rnnfast.losses.mse``. Data is a tuple ``(inputs, targets)`` or ``(inputs, targets,
lengths)`` of arrays whose first axis is the example axis (batch-first: build the recurrent layers with
``batch_first=True`` or transpose inside the model). Per-step class targets of padded sequences are padded
with -100, which ``rnnfast.losses.cross_entropy`` ignores (its ``ignore_index``, as torch's):
``rnnfast.data.pad_sequences(tags, batch_first=True, padding_value=-100)``.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time

import numpy as np

from .clip import clip_grad_norm_
from .data import minibatches
from .module import Module
from .optim import Optimizer, ReduceLROnPlateau
from .serialization import _check_path, as_saved, write_npz_atomically

__all__ = ["fit", "evaluate", "predict", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "rnnfast-checkpoint"
_META = "__checkpoint__"


def _check_data(data, name):
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError(f"{name}: expected a tuple (inputs, targets) or (inputs, targets, lengths), "
                        f"got {type(data).__name__}")
    n = len(data[0])
    for i, a in enumerate(data):
        if not hasattr(a, "shape") or a.ndim < 1:
            raise TypeError(f"{name}[{i}]: expected an array with an example axis first, got {type(a).__name__}")
        if len(a) != n:
            raise ValueError(f"{name}[{i}]: {len(a)} examples, but {name}[0] has {n} (mismatched batch sizes)")
    if n == 0:
        raise ValueError(f"{name}: no examples")
    return tuple(data), n


def _run_batch(model, loss, batch, train):
    """Forward and loss (and backward when train) on one batch; returns (loss value, batch size)."""
    x, y = batch[0], batch[1]
    extra = batch[2:]
    pred = model(x, *extra)
    value, grad = loss(pred, y)
    if train and math.isfinite(value):
        model.backward(grad)
    return value, pred


def _set_modes(model, modes):
    for m, mode in zip(model.modules(), modes):
        m.training = mode


def evaluate(model, loss, data, batch_size=256) -> float:
    """The mean loss over ``data`` in eval mode (each batch's mean weighted by its size); the model's
    training/eval modes are restored afterwards."""
    data, n = _check_data(data, "data")
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        total = 0.0
        for idx in minibatches(n, batch_size, shuffle=False):
            value, _ = _run_batch(model, loss, tuple(a[idx] for a in data), train=False)
            total += value * len(idx)
    finally:
        _set_modes(model, modes)
    return total / n


def predict(model, inputs, lengths=None, batch_size=256):
    """model(inputs) in eval mode, in batches along axis 0, concatenated (modes restored afterwards)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        outs = []
        for idx in minibatches(len(inputs), batch_size, shuffle=False):
            outs.append(model(inputs[idx]) if lengths is None else model(inputs[idx], lengths[idx]))
    finally:
        _set_modes(model, modes)
    return np.concatenate(outs, axis=0)


# ============================================================================ checkpoints


def _generators(model):
    """{"module.path:attr": Generator} for every random generator the model's modules hold (dropout masks)."""
    out = {}
    for name, m in model.named_modules():
        for attr, v in vars(m).items():
            if isinstance(v, np.random.Generator):
                out[f"{name}:{attr}"] = v
    return out


def save_checkpoint(path, model, optimizer, extra=None):
    """Writes the model's parameters, the optimizer's state, the model's random generators and ``extra``
    (a JSON-able dict) to ``path`` atomically (the previous checkpoint stays whole until the new one is)."""
    path = _check_path(path)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    sd = optimizer.state_dict()
    scalars = []
    for i, s in enumerate(sd["state"]):
        sc = {}
        for k, v in s.items():
            if hasattr(v, "shape"):
                arrays[f"optim/{i}/{k}"] = np.asarray(v)
            else:
                sc[k] = v
        scalars.append(sc)
    meta = {"format": CHECKPOINT_FORMAT, "version": 1, "optim_hyper": sd["hyper"], "optim_scalars": scalars,
            "generators": {k: g.bit_generator.state for k, g in _generators(model).items()}, "extra": extra or {}}
    arrays[_META] = np.array(json.dumps(meta))
    write_npz_atomically(path, arrays)


def load_checkpoint(path, model, optimizer):
    """Restores what save_checkpoint wrote into ``model`` and ``optimizer`` and returns its ``extra``.
    Everything is read and checked first: a damaged or foreign file raises ValueError naming the path and
    changes nothing."""
    path = _check_path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: as_saved(z[k]) for k in z.files}
        meta = json.loads(str(arrays.pop(_META)[()]))
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != 1:
            raise ValueError(f"not an {CHECKPOINT_FORMAT} file of version 1")
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever np.load/json make of it
        raise ValueError(f"checkpoint {path!r} is damaged or not an rnnfast checkpoint ({type(e).__name__}: {e})") \
            from None
    model_sd = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    params = dict(model.named_parameters())
    if sorted(model_sd) != sorted(params) or any(model_sd[k].shape != p.data.shape for k, p in params.items()):
        raise ValueError(f"checkpoint {path!r} does not fit this model: it holds "
                         f"{ {k: v.shape for k, v in model_sd.items()} }, the model "
                         f"{ {k: p.data.shape for k, p in params.items()} }")
    states = [dict(sc) for sc in meta["optim_scalars"]]
    if len(states) != len(optimizer.params):
        raise ValueError(f"checkpoint {path!r}: optimizer state for {len(states)} parameters, this optimizer has "
                         f"{len(optimizer.params)}")
    for k, v in arrays.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            states[int(i)][name] = v
    gens = _generators(model)
    if set(gens) != set(meta["generators"]):
        raise ValueError(f"checkpoint {path!r}: random generators {sorted(meta['generators'])} do not match the "
                         f"model's {sorted(gens)}")
    # Everything checked: from here on nothing can fail half-way.
    model.load_state_dict(model_sd)
    hyper = dict(meta["optim_hyper"])
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    optimizer.load_state_dict({"hyper": hyper, "state": states})
    for k, g in gens.items():
        g.bit_generator.state = meta["generators"][k]
    return meta["extra"]


# ============================================================================ fit


def _tbptt_batches(batch, k):
    """A batch (x (B, T, ...), y (B, T, ...)) cut along time into chunks of k steps."""
    x, y = batch
    T = x.shape[1]
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"tbptt: targets must be per step, shape (B, T, ...) like the inputs {x.shape[:2]}, "
                         f"got {y.shape}")
    return [(x[:, s:s + k], y[:, s:s + k]) for s in range(0, T, k)]


def fit(model, loss, train, val=None, *, optimizer, epochs=10, batch_size=32, shuffle=True, seed=0,
        clip_norm=None, scheduler=None, early_stopping=None, restore_best=False, checkpoint=None, resume=False,
        tbptt=None, progress=True, desc="train"):
    """Trains ``model`` and returns its history.

    model, loss, train, val: see the module doc (val: the same kind of tuple, evaluated after each epoch).
    optimizer: an ``rnnfast.optim`` optimizer over the model's parameters. epochs: the last epoch to run.
    batch_size, shuffle, seed: mini-batches, shuffled by (seed, epoch) (``rnnfast.data.minibatches``).
    clip_norm: if given, ``clip_grad_norm_`` to this norm before each step.
    scheduler: an ``rnnfast.optim`` schedule, stepped once per epoch (ReduceLROnPlateau with the validation
        loss, or the training loss without val).
    early_stopping: stop after this many epochs without a better validation loss (needs val);
        restore_best: at the end put back the weights of the best epoch (kept in memory: after a resume, the
        best epoch since the resume).
    checkpoint: a file to write (atomically) after every epoch: model, optimizer, schedule, history, the
        model's random generators. resume: continue from that file if it exists; the result equals an
        uninterrupted run bit for bit.
    tbptt: truncated BPTT with chunks of this many steps: each batch (x (B, T, ...), y (B, T, ...)) is cut
        along time; the model is called ``pred, state = model(x_chunk, state)`` (state None at the start of
        a batch) and differentiated per chunk, the state carried forward but not differentiated through.
    progress: a tqdm bar per epoch with the running loss and examples per second.

    Returns {"epoch", "loss", "val_loss", "lr", "seconds"}: one entry per epoch run (including resumed ones).
    A NaN or infinite loss stops training with FloatingPointError; the checkpoint file keeps the last good
    epoch.
    """
    from tqdm import tqdm

    train, n, val = _check_fit(model, optimizer, train, val, epochs, early_stopping, tbptt, resume, checkpoint)
    history = {"epoch": [], "loss": [], "val_loss": [], "lr": [], "seconds": []}
    state = {"best": math.inf, "bad": 0, "best_weights": None}
    start = 1
    if resume and os.path.exists(checkpoint):
        history, start = _resume(checkpoint, model, optimizer, scheduler, state)
    params = model.parameters()
    model.train()
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        batches = minibatches(n, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        bar = tqdm(batches, desc=f"{desc} {epoch}/{epochs}", disable=not progress, leave=False, unit="batch")
        train_loss = _train_epoch(model, loss, train, bar, optimizer, params, clip_norm, tbptt, epoch, checkpoint,
                                  t0)
        val_loss = evaluate(model, loss, val, batch_size=max(batch_size, 256)) if val is not None else None
        _step_scheduler(scheduler, val_loss, train_loss)
        seconds = time.perf_counter() - t0
        for k, v in zip(("epoch", "loss", "val_loss", "lr", "seconds"),
                        (epoch, train_loss, val_loss, optimizer.lr, seconds)):
            history[k].append(v)
        stop = _track_best(state, model, val_loss, early_stopping, restore_best)
        if progress:
            msg = f"{desc} epoch {epoch}/{epochs}: loss {train_loss:.4g}"
            msg += f", val_loss {val_loss:.4g}" if val_loss is not None else ""
            tqdm.write(msg + f", {seconds:.2f} s")
        if checkpoint is not None:
            _save_epoch(checkpoint, model, optimizer, scheduler, epoch, history, state)
        if stop:
            break
    if restore_best and state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    return history


def _check_fit(model, optimizer, train, val, epochs, early_stopping, tbptt, resume, checkpoint):
    """fit's arguments checked; returns (train, its example count, val)."""
    if not isinstance(model, Module):
        raise TypeError(f"model: expected an rnnfast.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected an rnnfast.optim optimizer, got {type(optimizer).__name__}")
    train, n = _check_data(train, "train")
    if val is not None:
        val, _ = _check_data(val, "val")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if early_stopping is not None and val is None:
        raise ValueError("early_stopping needs val data")
    if tbptt is not None:
        if isinstance(tbptt, bool) or not isinstance(tbptt, numbers.Integral) or tbptt < 1:
            raise ValueError(f"tbptt must be an int >= 1, got {tbptt!r}")
        if len(train) != 2:
            raise ValueError("tbptt: train must be (inputs, targets) (no lengths)")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    return train, n, val


def _resume(checkpoint, model, optimizer, scheduler, state):
    """Restores fit's run from its checkpoint (and `state`'s best loss and bad-epoch count); returns (history,
    the first epoch to run)."""
    extra = load_checkpoint(checkpoint, model, optimizer)
    state.update(best=extra["best"], bad=extra["bad"])
    if scheduler is not None:
        scheduler.load_state_dict(extra["scheduler"])
    return extra["history"], extra["epoch"] + 1


def _train_epoch(model, loss, train, bar, optimizer, params, clip_norm, tbptt, epoch, checkpoint, t0):
    """One epoch over the batches of `bar` (tqdm over the index batches): an optimizer step per batch (per chunk
    with tbptt); returns the epoch's mean loss. A loss that is not finite raises FloatingPointError."""
    total, seen = 0.0, 0
    for b, idx in enumerate(bar):
        batch = tuple(a[idx] for a in train)
        pieces = _tbptt_batches(batch, tbptt) if tbptt else [batch]
        carried = None
        for piece in pieces:
            if tbptt:
                pred, carried = model(piece[0], carried)
                value, grad = loss(pred, piece[1])
                if math.isfinite(value):
                    model.backward(grad)
            else:
                value, _ = _run_batch(model, loss, piece, train=True)
            if not math.isfinite(value):
                kept = f"; {checkpoint!r} keeps epoch {epoch - 1}" if checkpoint and epoch > 1 else ""
                raise FloatingPointError(f"fit: the loss is {value} at epoch {epoch}, batch {b + 1}: training "
                                         f"diverged (lower the learning rate or clip gradients){kept}")
            if clip_norm is not None:
                clip_grad_norm_(params, clip_norm)
            optimizer.step()
            optimizer.zero_grad()
            total += value * len(idx) / len(pieces)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4g}", ex_per_s=f"{seen / (time.perf_counter() - t0):.0f}",
                        refresh=False)  # drawn with the next update, with the current count
    bar.close()
    return total / seen


def _step_scheduler(scheduler, val_loss, train_loss):
    """Steps the schedule once an epoch: ReduceLROnPlateau with the validation loss (the training loss without
    val)."""
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_loss if val_loss is not None else train_loss)
    else:
        scheduler.step()


def _save_epoch(checkpoint, model, optimizer, scheduler, epoch, history, state):
    """The checkpoint after an epoch: what _resume needs to continue the run bit for bit."""
    extra = {"epoch": epoch, "history": history, "best": state["best"], "bad": state["bad"],
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    save_checkpoint(checkpoint, model, optimizer, extra)


def _track_best(state, model, val_loss, early_stopping, restore_best):
    """Updates `state` (best validation loss, epochs since, the best weights with restore_best) after an epoch;
    True when early stopping ends the run here."""
    if val_loss is None:
        return False
    if val_loss < state["best"]:
        state["best"], state["bad"] = val_loss, 0
        if restore_best:
            state["best_weights"] = model.state_dict()
        return False
    state["bad"] += 1
    return early_stopping is not None and state["bad"] >= early_stopping
