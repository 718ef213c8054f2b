"""Every picture the project makes: annotated detections, training curves, precision-recall curves.

Label text is black or white, whichever contrasts more with the class colour it sits on, so it
stays readable on any photo (the text is drawn on a filled box, never on the photo itself).
Figures are written atomically (matplotlib's Agg backend, no display needed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .io import atomic_write

# 20 well-separated colours (hex RGB); class c gets PALETTE[c % 20], the same in every run.
_HEX = ("FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
        "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7").split()
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _HEX)  # BGR


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour that depends on the class id only."""
    return PALETTE[int(class_id) % len(PALETTE)]


def _luminance(bgr: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour, 0 (black) to 1 (white)."""
    lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in bgr]
    return 0.0722 * lin[0] + 0.7152 * lin[1] + 0.2126 * lin[2]


def text_colour(bg_bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever has the higher WCAG contrast ratio on ``bg_bgr`` (always >= 4.5)."""
    lum = _luminance(bg_bgr)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def label_text(class_id: int, score: float, names: Sequence[str] | None) -> str:
    name = names[class_id] if names is not None and 0 <= class_id < len(names) else str(class_id)
    return f"{name} {score:.2f}"


def draw_detections(img: np.ndarray, dets: np.ndarray, names: Sequence[str] | None = None,
                    line_width: int | None = None, copy: bool = True) -> np.ndarray:
    """Draw ``dets`` (``ndarray[K, 6]`` x1, y1, x2, y2, score, class in ``img`` pixels) on a BGR image."""
    out = img.copy() if copy else img
    h, w = out.shape[:2]
    lw = line_width or max(1, round((h + w) / 2 * 0.003))
    font_scale = lw / 3
    thick = max(1, lw - 1)
    dets = np.asarray(dets, dtype=np.float32).reshape(-1, 6)
    for x1, y1, x2, y2, score, cls in dets[np.argsort(dets[:, 4], kind="stable")]:  # best drawn last, on top
        cls = int(cls)
        colour = class_colour(cls)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, colour, lw)  # axis-aligned: no anti-aliasing needed
        text = label_text(cls, float(score), names)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        th += base
        # above the box when it fits, else just inside its top edge; never past the right border
        top = p1[1] - th if p1[1] - th >= 0 else p1[1]
        left = min(p1[0], max(0, w - tw))
        cv2.rectangle(out, (left, top), (left + tw, top + th), colour, -1)
        cv2.putText(out, text, (left, top + th - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    text_colour(colour), thick, cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------------------------------
# matplotlib figures
# ---------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int = 100) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)


def plot_results(rows: list[dict[str, float]], png_path: Path) -> None:
    """Loss and mAP curves per epoch (matplotlib, Agg backend)."""
    plt = _pyplot()
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, key in zip(axes, ("box", "obj", "cls")):
        ax.plot(ep, [r.get(key, float("nan")) for r in rows], marker="o")
        ax.set_title(f"{key} loss")
        ax.set_xlabel("epoch")
    for key in ("map50", "map"):
        axes[3].plot(ep, [r.get(key, float("nan")) for r in rows], marker="o", label=key)
    axes[3].set_title("validation mAP")
    axes[3].set_xlabel("epoch")
    axes[3].legend()
    _save(fig, png_path)


def plot_pr_curves(ev: Any, info: Any, out_dir: str | Path) -> list[Path]:
    """PNG precision-recall curves from COCOeval's precision array: every class with ground truth
    (thin) and their mean (bold), at IoU 0.5 and averaged over IoU 0.5:0.95."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    recall = np.asarray(ev.params.recThrs)
    names = {c: n for c, n in zip(info.category_ids, info.names)}
    has_gt = [k for k in range(precision.shape[2]) if (precision[:, :, k] > -1).any()]
    paths = []
    for tag, title, curves in (("50", "IoU 0.5", precision[0]),
                               ("50_95", "IoU 0.5:0.95 (mean over thresholds)", precision.mean(0))):
        fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
        for k in has_gt:
            ax.plot(recall, curves[:, k], lw=0.6, alpha=0.35, color="tab:gray")
        if has_gt:
            mean = curves[:, has_gt].mean(1)
            ap = float(precision[0 if tag == "50" else slice(None)][..., has_gt].mean())
            ax.plot(recall, mean, lw=2.5, color="tab:blue", label=f"mean of {len(has_gt)} classes (AP {ap:.3f})")
            best = sorted(has_gt, key=lambda k: -curves[:, k].mean())[:5]
            for k in best:
                ax.plot(recall, curves[:, k], lw=1.2, label=f"{names.get(ev.params.catIds[k], k)} "
                                                           f"({curves[:, k].mean():.3f})")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
               title=f"Precision-recall, {title}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        path = out / f"pr_curve_{tag}.png"
        _save(fig, path)
        paths.append(path)
    return paths


def plot_bn_scales(history: Sequence[np.ndarray], png_path: Path, first_epoch: int = 1) -> None:
    """Histograms of the prunable BatchNorm scales |gamma|, one line per epoch (sparsity training)."""
    plt = _pyplot()
    if not len(history):
        return
    top = max(float(np.max(h)) if len(h) else 0.0 for h in history) or 1.0
    bins = np.linspace(0.0, top, 61)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.viridis(np.linspace(0, 1, len(history)))
    for k, (h, c) in enumerate(zip(history, colours)):
        counts, _ = np.histogram(h, bins)
        ax.plot((bins[:-1] + bins[1:]) / 2, counts, color=c, lw=1.2, label=f"epoch {first_epoch + k}")
    ax.set(xlabel="|gamma| (BN scale)", ylabel="channels", yscale="symlog",
           title=f"BN scales of the prunable convolutions ({len(history[-1])} channels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, png_path)
