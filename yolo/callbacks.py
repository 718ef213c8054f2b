"""Trainer events and the callbacks on them: what a run does besides the optimiser step.

A callback is an object with methods named after ``EVENTS`` (subclass ``Callback`` and override
the ones you need), or a plain function given to ``Trainer.add_callback(event, fn)``; each is
called with the ``Trainer``, whose attributes hold the state of the moment (below). A new
regulariser, logger or schedule is a callback, not an edit of the Trainer; the run's own
extras are callbacks too (``EMAUpdate``, ``Checkpointing``, ``Progress`` here, ``ResultsLog``
in ``yolo.trainer``, ``SparsityTraining`` in ``yolo.prune``).

Every event fires on every DDP rank, except ``on_eval_end`` (rank 0 evaluates); a callback that
writes files or prints checks ``trainer.main``. What a callback reads on the trainer:
``state`` (``TrainState``: epoch, step, batch_in_epoch, seen, best_fitness, skipped), ``plan``,
``hyp``, ``opts``, ``model`` (the Darknet), ``wrapped`` (what trains, DDP-wrapped), ``ema``,
``optimizer``, ``scaler``, ``out`` (the run folder), ``lr`` (this step's), ``n_batches`` (this
epoch's minibatches), ``batch_losses`` (the epoch's running mean box/obj/cls/total, None before
the first), ``epoch_logs``, ``metrics``, ``improved``, ``epoch_time()``, ``summary``.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable

from tqdm import tqdm

from .checkpoint import prune_step_checkpoints, save_checkpoint, step_checkpoint_path

if TYPE_CHECKING:
    from .trainer import Trainer

Handler = Callable[["Trainer"], Any]


class Callback:
    """Base of the trainer's callbacks: one method per event, in the order a run fires them, each
    doing nothing. Override the ones you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Set up, before the first epoch (a resumed run: its state restored)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """The epoch's loader built (``n_batches``), gradients zeroed."""

    def on_before_step(self, trainer: Trainer) -> None:
        """Gradients accumulated, ``lr`` set, before ``optimizer.step``: edit ``.grad`` here (after
        ``trainer.unscale_gradients()``)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After an optimiser step; ``state.step`` counts it."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """After each minibatch (forward, backward, and the step when it was one): ``batch_losses``."""

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """The epoch's minibatches done: ``epoch_logs`` (mean losses over the ranks, lr, data wait)."""

    def on_eval_end(self, trainer: Trainer) -> None:
        """Rank 0, when the epoch was evaluated: ``metrics``."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the evaluation: ``metrics`` (NaN when not evaluated), ``improved`` (a new best mAP@.5)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """The run finished: ``summary``."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """Ctrl-C: ``state`` holds where the run stopped (the exception is re-raised after)."""


#: the trainer's events, in the order a run fires them (the methods of ``Callback``)
EVENTS: tuple[str, ...] = tuple(name for name in vars(Callback) if name.startswith("on_"))


class Callbacks:
    """The handlers of each event, called in the order they were added."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.objects: list[Any] = []
        self.handlers: dict[str, list[Handler]] = {e: [] for e in EVENTS}
        for cb in callbacks:
            self.add(cb)

    def add(self, callback: Any) -> None:
        """Every event method of ``callback`` (an object without any is refused)."""
        methods = {e: getattr(callback, e) for e in EVENTS if callable(getattr(callback, e, None))}
        if not methods:
            raise TypeError(f"{type(callback).__name__} has no trainer event method ({', '.join(EVENTS)})")
        self.objects.append(callback)
        for event, fn in methods.items():
            self.handlers[event].append(fn)

    def add_fn(self, event: str, fn: Handler) -> None:
        if event not in self.handlers:
            raise ValueError(f"unknown trainer event '{event}' (events: {', '.join(EVENTS)})")
        self.handlers[event].append(fn)

    def fire(self, event: str, trainer: Trainer) -> None:
        for fn in self.handlers[event]:
            fn(trainer)


# ---------------------------------------------------------------------------------------------
# the run's own callbacks
# ---------------------------------------------------------------------------------------------
class EMAUpdate(Callback):
    """The EMA of the weights follows every optimiser step (the EMA model is evaluated and saved)."""

    def on_step_end(self, trainer: Trainer) -> None:
        trainer.ema.update(trainer.wrapped)


class Checkpointing(Callback):
    """Rank 0: last.pt after every epoch (and on Ctrl-C, to resume mid-epoch); best.pt and the EMA
    model's best.weights when mAP@.5 improved; a step checkpoint (``step-0000200.pt``) every
    ``opts.save_period`` optimiser steps inside an epoch, the newest ``opts.keep`` kept, so that a
    SIGKILL loses at most ``save_period`` steps (the step ending an epoch or the run is saved as
    last.pt instead). Every file is written atomically."""

    def __init__(self) -> None:
        self._epoch_end = 0  # minibatches of the epoch being trained (resumed ones included)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._epoch_end = trainer.state.batch_in_epoch + trainer.n_batches

    def on_step_end(self, trainer: Trainer) -> None:
        period, state = trainer.opts.save_period, trainer.state
        if not trainer.main or not period or state.step % period:
            return
        if state.batch_in_epoch >= self._epoch_end or state.step >= trainer.plan.total_steps:
            return  # on_epoch_end writes last.pt right after
        save_checkpoint(trainer.checkpoint(epoch_done=False), step_checkpoint_path(trainer.out, state.step))
        prune_step_checkpoints(trainer.out, trainer.opts.keep)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.main:
            return
        ckpt = trainer.checkpoint(epoch_done=True)
        save_checkpoint(ckpt, trainer.out / "last.pt")
        if trainer.improved:
            save_checkpoint(ckpt, trainer.out / "best.pt")
            trainer.ema.module.save_darknet_weights(trainer.out / "best.weights")

    def on_interrupt(self, trainer: Trainer) -> None:
        if not trainer.main:
            return
        last, state = trainer.out / "last.pt", trainer.state
        save_checkpoint(trainer.checkpoint(epoch_done=False), last)
        print(f"interrupted: saved {last} (epoch {state.epoch + 1}, step {state.step}); "
              f"continue with --resume {last}", file=sys.stderr)


class Progress(Callback):
    """What a run prints: a tqdm bar per epoch (``--progress``), one line per epoch, the outcome."""

    def __init__(self, bars: bool = True) -> None:
        self.bars = bars
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        trainer.say(f"training {len(trainer.train_info.records)} images, validating on "
                    f"{len(trainer.val_info.records)}; output: {trainer.out}")

    def on_epoch_start(self, trainer: Trainer) -> None:
        done = trainer.state.batch_in_epoch
        self.bar = tqdm(total=done + trainer.n_batches, initial=done, unit="batch",
                        disable=not self.bars or not trainer.main, desc=f"epoch {trainer.state.epoch + 1}",
                        dynamic_ncols=True, leave=True)

    def on_batch_end(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        m = trainer.batch_losses
        if m is not None:
            self.bar.set_postfix_str(f"box {m[0]:.3f} obj {m[1]:.3f} cls {m[2]:.3f} lr {trainer.lr:.2e} "
                                     f"step {trainer.state.step}")

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, trainer: Trainer) -> None:
        logs, metrics, state = trainer.epoch_logs, trainer.metrics, trainer.state
        scored = (f"mAP@.5 {metrics['map50']:.4f} mAP {metrics['map']:.4f}" if metrics["map50"] == metrics["map50"]
                  else "not evaluated (--eval-interval)")
        trainer.say(f"epoch {state.epoch + 1}/{trainer.plan.epochs}: loss {logs['total']:.3f} (box "
                    f"{logs['box']:.3f} obj {logs['obj']:.3f} cls {logs['cls']:.3f}) lr {logs['lr']:.3g} {scored}  "
                    f"data wait {100 * logs['data_wait']:.0f}%  {trainer.epoch_time():.0f}s")

    def on_train_end(self, trainer: Trainer) -> None:
        state, out = trainer.state, trainer.out
        if state.skipped:
            trainer.say(f"{state.skipped} training image(s) could not be loaded and were skipped")
        trainer.say(f"done: {state.step} steps, best mAP@.5 {state.best_fitness:.4f}; {out / 'last.pt'}, "
                    f"{out / 'best.pt'}, {out / 'best.weights'}")

    def on_interrupt(self, trainer: Trainer) -> None:
        self.on_train_epoch_end(trainer)
