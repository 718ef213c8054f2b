"""The training-pictures callback: what training sees, as PNGs in the run folder.

* at the start of a fresh run: ``train_batch0.png`` ... ``train_batch2.png``, the first
  augmented minibatches of epoch 1 (the very samples the model trains on: augmentation is
  seeded by epoch and index) with their labels drawn, the first thing to look at when a model
  does not learn (wrong boxes, wrong classes, too strong jitter);
* at each evaluation: ``val_pred.png``, true (left) and predicted (right) boxes on the first
  few validation images, from the EMA model that was just scored;
* after the last evaluation: ``confusion_matrix.png`` and ``P_curve.png`` / ``R_curve.png`` /
  ``F1_curve.png`` (and ``val_pred.png``), from one more pass of the EMA model over at most
  ``max_final_images`` validation images (``test.py --plots`` writes the same from its run).

Rank 0 only. A picture that fails is a warning, never the end of the run.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .callbacks import Callback

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainingPictures(Callback):
    """``batches`` training minibatches (at most 16 images each) at the start, ``val_images``
    validation images at each evaluation, the end pictures on ``max_final_images`` images."""

    def __init__(self, batches: int = 3, val_images: int = 4, max_final_images: int = 500,
                 conf_thres: float = 0.25) -> None:
        self.batches, self.val_images = batches, val_images
        self.max_final_images, self.conf_thres = max_final_images, conf_thres

    @staticmethod
    def _warn(what: str, e: Exception) -> None:
        warnings.warn(f"training pictures: {what} not written ({type(e).__name__}: {e})", RuntimeWarning,
                      stacklevel=3)

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.main or trainer.out is None or trainer.state.step > 0 or not self.batches:
            return
        try:
            self.write_batches(trainer)
        except Exception as e:  # noqa: BLE001  (a picture never stops the run)
            self._warn("train_batch*.png", e)

    def write_batches(self, trainer: Trainer) -> None:
        from .loaders import collate
        from .plots_train import plot_batch

        trainer.sampler.set_epoch(trainer.state.epoch)
        trainer.dataset.set_epoch(trainer.state.epoch)
        order = list(iter(trainer.sampler))
        size = trainer.plan.minibatch
        for b in range(self.batches):
            idx = order[b * size:(b + 1) * size][:16]
            if not idx:
                break
            batch = collate([trainer.dataset[i] for i in idx])
            if batch["images"] is None:
                continue
            plot_batch(batch["images"].numpy(), batch["targets"].numpy(), trainer.train_info.names,
                       trainer.out / f"train_batch{b}.png")

    def _predictions(self, trainer: Trainer, n: int) -> list:
        from .datasets import DatasetInfo
        from .evaluate import evaluate

        info = trainer.val_info
        sub = DatasetInfo(info.records[:n], info.names, info.category_ids, info.source)
        predictions: list = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(trainer.ema.module, sub, img_size=trainer.img_size, batch_size=trainer.plan.minibatch,
                     workers=0, device=trainer.device, verbose=False, predictions=predictions)
        return predictions

    def on_eval_end(self, trainer: Trainer) -> None:
        if not trainer.main or trainer.out is None or not trainer.val_info.records:
            return
        state, plan = trainer.state, trainer.plan
        last = state.epoch + 1 >= plan.epochs or state.step >= plan.total_steps
        try:
            if last:
                from .plots_train import eval_pictures

                eval_pictures(self._predictions(trainer, self.max_final_images), trainer.val_info.names,
                              trainer.out, self.conf_thres)
            elif self.val_images:
                from .plots_train import predictions_picture

                predictions_picture(self._predictions(trainer, self.val_images), trainer.val_info.names,
                                    trainer.out / "val_pred.png", self.val_images, self.conf_thres)
        except Exception as e:  # noqa: BLE001
            self._warn("validation pictures", e)
