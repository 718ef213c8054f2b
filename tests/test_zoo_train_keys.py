"""The training keys of Darknet's zoo cfgs: [yolo] objectness_smooth, [net] ema_alpha, the sgdr / step / exp /
sig lr policies, stopbackward and onlyforward, and the declared keys the trainer accepts or refuses."""
from __future__ import annotations

import math

import pytest
import torch

from yolo.loss import YOLOLoss
from yolo.model import Darknet

from helpers import TRAIN_TINY

SIZE = 128


# --- [yolo] objectness_smooth and Darknet's ignore rule ----------------------------------------
@pytest.fixture()
def tiny() -> Darknet:
    m = Darknet(TRAIN_TINY)
    for layer in m.yolo_layers:
        layer.settings.iou_thresh, layer.settings.iou_loss, layer.settings.ignore_thresh = 1.0, "mse", 0.7
    return m.train()


def objectness_grad(model: Darknet, smooth: bool, edit) -> torch.Tensor:
    """d loss / d objectness logit of layer 0 (stride 16, anchors 30, 40, 52) for one 30x30 target at (40, 40)
    (assigned: anchor 0, cell (2, 2)); ``edit(out)`` sets raw outputs first (all others 0)."""
    for layer in model.yolo_layers:
        layer.settings.objectness_smooth = smooth
    with torch.no_grad():
        outs = [torch.zeros_like(o) for o in model(torch.zeros(1, 3, SIZE, SIZE))]
        edit(outs[0])
    for o in outs:
        o.requires_grad_(True)
    t = torch.tensor([[0, 0, 40 / SIZE, 40 / SIZE, 30 / SIZE, 30 / SIZE]])
    YOLOLoss(model)(outs, t, (SIZE, SIZE))[0].backward()
    return outs[0].grad[0, ..., 4]


def wide(out: torch.Tensor, anchor: int, anchor_w: float, iou: float) -> None:
    """Anchor ``anchor`` of cell (2, 2) predicts the target's centre, height 30 and width 30 / iou: that IoU."""
    out[0, anchor, 2, 2, 2] = math.log(30 / iou / anchor_w)
    out[0, anchor, 2, 2, 3] = math.log(30 / anchor_w)


def test_objectness_smooth_targets_are_the_ious_as_darknets_process_batch(tiny):
    def edit(out):
        wide(out, 0, 30, 0.8)  # the assigned prediction, IoU 0.8 > ignore_thresh
        wide(out, 1, 40, 0.9)  # another anchor of the cell, IoU 0.9

    plain, smooth = objectness_grad(tiny, False, edit), objectness_grad(tiny, True, edit)
    # without smoothing (delta = 1 - out at the assigned one, 0 where IoU > ignore_thresh, -out elsewhere)
    assert plain[0, 2, 2].item() == pytest.approx(0.5 - 1.0)
    assert plain[1, 2, 2].item() == 0.0
    assert plain[2, 4, 4].item() == pytest.approx(0.5)
    # smoothed: delta = iou - out where IoU > ignore_thresh, the assigned cell included; -out elsewhere
    assert smooth[0, 2, 2].item() == pytest.approx(0.5 - 0.8, abs=1e-5)
    assert smooth[1, 2, 2].item() == pytest.approx(0.5 - 0.9, abs=1e-5)
    assert smooth[2, 4, 4].item() == pytest.approx(0.5)


def test_objectness_smooth_keeps_the_assigned_cells_first_pass_delta(tiny):
    """Darknet writes 1 - out at an assigned cell only ``if (l.delta[obj_index] == 0)``: smoothed, the first
    pass has written -out there (IoU 0.5 < ignore_thresh), so the assigned prediction is pushed down."""
    def edit(out):
        wide(out, 0, 30, 0.5)

    assert objectness_grad(tiny, False, edit)[0, 2, 2].item() == pytest.approx(-0.5)
    assert objectness_grad(tiny, True, edit)[0, 2, 2].item() == pytest.approx(0.5)


def test_the_ignore_rule_needs_a_class_probability_above_a_quarter(tiny):
    """Darknet's best_match_iou counts a prediction only where some class probability exceeds 0.25
    (compare_yolo_class): an exact box with every class at 0.12 is still pushed down."""
    def exact(out, logit):
        wide(out, 1, 40, 1.0)
        out[0, 1, 2, 2, 5:] = logit

    assert objectness_grad(tiny, False, lambda o: exact(o, 0.0))[1, 2, 2].item() == 0.0
    assert objectness_grad(tiny, False, lambda o: exact(o, -2.0))[1, 2, 2].item() == pytest.approx(0.5)
    assert objectness_grad(tiny, True, lambda o: exact(o, 0.0))[1, 2, 2].item() == pytest.approx(0.5 - 1.0, abs=1e-5)
    assert objectness_grad(tiny, True, lambda o: exact(o, -2.0))[1, 2, 2].item() == pytest.approx(0.5)


def test_label_smooth_eps_is_darknets(tiny):
    """delta_yolo_class: y_true * (1 - eps) + 0.5 * eps, for the true class and the others."""
    for layer in tiny.yolo_layers:
        layer.settings.label_smooth_eps = 0.1
    with torch.no_grad():
        outs = [torch.zeros_like(o) for o in tiny(torch.zeros(1, 3, SIZE, SIZE))]
    for o in outs:
        o.requires_grad_(True)
    t = torch.tensor([[0, 1, 40 / SIZE, 40 / SIZE, 30 / SIZE, 30 / SIZE]])
    YOLOLoss(tiny)(outs, t, (SIZE, SIZE))[0].backward()
    assert outs[0].grad[0, 0, 2, 2, 5:].tolist() == pytest.approx([0.5 - 0.05, 0.5 - 0.95, 0.5 - 0.05])


def test_objectness_smooth_is_read_from_the_cfg(tmp_path):
    text = TRAIN_TINY.read_text().replace("ignore_thresh=.7", "ignore_thresh=.7\nobjectness_smooth=1", 1)
    cfg = tmp_path / "smooth.cfg"
    cfg.write_text(text)
    m = Darknet(cfg)
    assert [h.settings.objectness_smooth for h in m.heads] == [True, False]
    assert "objectness_smooth=1" in m.heads[0].settings_row()[1]


# --- lr policies: Darknet's get_current_rate ---------------------------------------------------
def darknet_rate(batch_num: int, net) -> float:
    """network.c get_current_rate, transcribed (batch_num: updates done, counting this one)."""
    if batch_num < net.burn_in:
        return net.learning_rate * (batch_num / net.burn_in) ** net.power
    if net.policy == "step":
        return net.learning_rate * net.scale ** (batch_num // net.step)
    if net.policy == "exp":
        return net.learning_rate * net.gamma ** batch_num
    if net.policy == "sigmoid":
        return net.learning_rate * (1.0 / (1.0 + math.exp(net.gamma * (batch_num - net.step))))
    if net.policy == "sgdr":
        last_iteration_start, cycle_size = 0, net.sgdr_cycle or net.max_batches  # parse: default max_batches
        while last_iteration_start + cycle_size < batch_num:
            last_iteration_start += cycle_size
            cycle_size *= net.sgdr_mult
        return net.learning_rate_min + 0.5 * (net.learning_rate - net.learning_rate_min) * (
            1.0 + math.cos((batch_num - last_iteration_start) * 3.14159265 / cycle_size))
    raise AssertionError(net.policy)


def cfg_net(text: str):
    from yolo.cfg import parse_cfg_text
    from yolo.netconfig import NetConfig

    section = parse_cfg_text("[net]\nwidth=32\nheight=32\n" + text)[0]
    return NetConfig.from_section(section), section


# resnet152_trident.cfg's schedule; efficientnet-lite3.cfg's; and exp / sigmoid ones
SCHEDULES = {
    "sgdr": ("learning_rate=0.001\nburn_in=1000\nmax_batches=10000\npolicy=sgdr\nsgdr_cycle=1000\nsgdr_mult=2\n"
             "steps=4000,6000,8000,9000", [0, 500, 998, 1000, 1001, 2000, 3000, 3001, 5000, 7000, 9999]),
    "sgdr default cycle": ("learning_rate=0.01\nlearning_rate_min=0.001\nmax_batches=300\npolicy=sgdr",
                           [0, 1, 149, 298, 299, 300, 301, 600]),
    "step": ("learning_rate=0.256\nburn_in=1000\nmax_batches=20000\npolicy=step\nstep=10000\nscale=0.96",
             [0, 998, 1000, 9999, 10000, 19999]),
    "exp": ("learning_rate=0.1\npolicy=exp\ngamma=0.999\nmax_batches=100", [0, 10, 99]),
    "sigmoid": ("learning_rate=0.1\npolicy=sigmoid\ngamma=0.05\nstep=50\nmax_batches=100", [0, 49, 50, 99]),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_policies_follow_darknets_get_current_rate(name):
    from yolo.hyp import Hyp, lr_at

    text, steps = SCHEDULES[name]
    net, section = cfg_net(text)
    assert section.unused() == []
    hyp = Hyp.from_net(net)
    for step in steps:  # Darknet's batch_num: step + 1 in the warm-up, the policies one step behind (lr_at)
        batch_num = step + 1 if step + 1 < net.burn_in else step
        assert lr_at(step, hyp) == pytest.approx(darknet_rate(batch_num, net), rel=1e-6, abs=1e-12), step


def test_sgdr_restarts_each_cycle_longer():
    from yolo.hyp import Hyp, lr_at

    net, _ = cfg_net(SCHEDULES["sgdr"][0])
    lr = [lr_at(s, Hyp.from_net(net)) for s in range(10000)]
    assert lr[999] == pytest.approx(net.learning_rate)  # the warm-up's end
    assert lr[1000] == pytest.approx(net.learning_rate_min)  # the first cycle (as long as the warm-up) ends
    assert lr[1001] == pytest.approx(net.learning_rate, rel=1e-5)  # a restart
    ends = [s for s in range(1, 9999) if lr[s + 1] > lr[s] * 10]  # the steps before a restart
    assert ends == [1000, 3000, 7000]  # cycles of 1000, 2000, 4000 steps


def test_a_short_run_shrinks_the_sgdr_cycle_and_the_step():
    from yolo.hyp import Overrides, resolve_hyp

    net, _ = cfg_net(SCHEDULES["sgdr"][0])
    s = resolve_hyp(net, Overrides(), total_steps=100)
    assert (s["sgdr_cycle"].value, s["sgdr_cycle"].source) == (10, "shrunk from 1000")
    assert (s["burn_in"].value, s["max_batches"].value) == (10, 100)
    net, _ = cfg_net(SCHEDULES["step"][0])
    s = resolve_hyp(net, Overrides(), total_steps=200)
    assert (s["step"].value, s["scale"].value) == (100, 0.96)
    net, _ = cfg_net(SCHEDULES["sgdr default cycle"][0])
    assert resolve_hyp(net, Overrides(), total_steps=30)["sgdr_cycle"].value == 0  # max_batches, itself shrunk


def test_impossible_schedules_are_refused():
    from yolo.hyp import HypError, Overrides, resolve_hyp

    net, _ = cfg_net("policy=sgdr\nsgdr_mult=0\nmax_batches=10")
    with pytest.raises(HypError, match="sgdr_mult >= 1"):
        resolve_hyp(net, Overrides(), total_steps=10)
    net, _ = cfg_net("policy=step\nstep=0\nmax_batches=10")
    with pytest.raises(HypError, match="policy=step needs step >= 1"):
        resolve_hyp(net, Overrides(), total_steps=10)


def test_a_checkpoint_from_before_the_policy_fields_still_resumes():
    from yolo.hyp import LATER_FIELDS, Hyp

    net, _ = cfg_net("policy=steps\nsteps=5\nscales=.1\nmax_batches=10")
    saved = {k: v for k, v in Hyp.from_net(net).to_dict().items() if k not in LATER_FIELDS}
    assert Hyp.from_dict(saved) == Hyp.from_net(net)


# --- the trainer: ema_alpha, stopbackward, onlyforward, declared keys -------------------------
MICRO = TRAIN_TINY.parent / "train_micro.cfg"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    import sys

    sys.path.insert(0, str(TRAIN_TINY.parent))
    from train_synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("shapes"), n_train=8, n_valid=4, size=64)


def micro_cfg(tmp_path, net: str = "", conv: dict[int, str] | None = None, yolo: str = ""):
    """train_micro.cfg (4 steps, no warm-up) with ``net`` lines in [net], ``conv[i]`` in its i-th section."""
    text = MICRO.read_text().replace("burn_in=5\nmax_batches=100", "burn_in=0\nmax_batches=4\n" + net)
    parts = text.split("\n[")  # the comment, [net], then the sections
    for i, extra in (conv or {}).items():
        parts[i + 2] = parts[i + 2].rstrip("\n") + "\n" + extra + "\n"
    text = "\n[".join(parts).replace("random=0", "random=0\n" + yolo)
    cfg = tmp_path / "micro.cfg"
    cfg.write_text(text)
    return cfg


def trainer(tmp_path, cfg, shapes, **kw):
    import warnings

    from yolo.trainer import Trainer, TrainOptions

    opts = TrainOptions(**{"cfg": str(cfg), "data": str(shapes), "output": str(tmp_path / "run"), "batch": 4,
                           "batch_size": 4, "img_size": 64, "workers": 0, "progress": False, "eval_interval": 99,
                           "seed": 1, **kw})
    said: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(opts, torch.device("cpu"), say=lambda *a, **k: said.append(" ".join(map(str, a))),
                    callbacks=[])
    t.said = "\n".join(said)
    return t


def test_ema_alpha_is_the_ema_decay_unless_the_flag_is_given(tmp_path, shapes):
    from yolo.hyp import resolve_ema_decay

    t = trainer(tmp_path / "a", micro_cfg(tmp_path, "ema_alpha=0.998"), shapes)
    assert t.ema.decay == 0.998 and "cfg ema_alpha" in t.said
    net = t.model.net
    assert (resolve_ema_decay(0.95, net).value, resolve_ema_decay(0.95, net).source) == (0.95, "--ema-decay")
    net.ema_alpha = 0.0  # Darknet's "no EMA": the trainer keeps its own (it evaluates and saves the EMA)
    assert (resolve_ema_decay(0.9999, net).value, resolve_ema_decay(0.9999, net).source) == (0.9999, "default")


def test_the_settings_table_shows_the_policys_own_values(tmp_path, shapes):
    said = trainer(tmp_path / "a", micro_cfg(tmp_path), shapes).said
    assert "steps" in said and "sgdr_cycle" not in said and "gamma" not in said
    cfg = micro_cfg(tmp_path, "policy=sgdr\nsgdr_cycle=2\n").read_text().replace("policy=steps\n", "")
    (tmp_path / "sgdr.cfg").write_text(cfg)
    said = trainer(tmp_path / "b", tmp_path / "sgdr.cfg", shapes).said
    assert "sgdr_cycle" in said and "sgdr_mult" in said and "learning_rate_min" in said


class Weights:
    """A callback keeping a copy of every section's parameters and BatchNorm statistics after each step."""

    def __init__(self):
        self.seen = []

    def __call__(self, t):
        self.seen.append([{k: v.detach().clone() for k, v in b.state_dict().items() if v.is_floating_point()}
                          for b in t.model.module_list])


def same(a: dict, b: dict, part: str) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if part in k)


def fit_recording(t) -> tuple[list, Weights]:
    first = Weights()
    first(t)
    rec = Weights()
    t.add_callback("on_step_end", rec)
    t.fit()
    return first.seen[0], rec


def mark(monkeypatch, attrs: dict[int, tuple[str, int]]) -> None:
    """The trainer's model gets ``attrs`` (section -> (attribute, value)) as its blocks' per-layer keys, as
    [convolutional] stopbackward= and [route] onlyforward= set them when read from the cfg."""
    class Marked(Darknet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for i, (name, value) in attrs.items():
                setattr(self.module_list[i], name, value)

    monkeypatch.setattr("yolo.trainer.Darknet", Marked)


def test_stopbackward_1_freezes_the_sections_before_it_and_stops_its_gradient(tmp_path, shapes, monkeypatch):
    from yolo.trainer import set_train_mode

    mark(monkeypatch, {1: ("stopbackward", 1)})
    t = trainer(tmp_path, micro_cfg(tmp_path), shapes)
    assert (t.stop.frozen, t.stop.no_grad, t.stop.until, t.frozen) == (1, 2, (), 1)
    assert "stopbackward=1 at" in t.said
    start, rec = fit_recording(t)
    end = rec.seen[-1]
    assert len(rec.seen) == 4
    assert same(start[0], end[0], "") and same(start[1], end[1], "weight") and same(start[1], end[1], "bias")
    assert not same(start[1], end[1], "running_mean")  # Darknet trains the stop layer's BatchNorm statistics
    assert not same(start[2], end[2], "weight")  # the sections after it train
    set_train_mode(t.wrapped, t.frozen)
    assert [b.training for b in t.model.module_list][:3] == [False, True, True]


def test_stopbackward_n_holds_the_sections_up_to_it_for_n_steps(tmp_path, shapes, monkeypatch):
    from yolo.trainer import StopBackward

    mark(monkeypatch, {1: ("stopbackward", 3)})
    t = trainer(tmp_path, micro_cfg(tmp_path), shapes)
    assert t.stop == StopBackward(0, 0, ((1, 3),))
    assert [t.stop.held(s) for s in range(5)] == [2, 2, 2, 0, 0]
    assert "not updated for the first 3 steps" in t.said
    start, rec = fit_recording(t)
    for step in range(3):  # steps 0, 1, 2: sections 0 and 1 not updated, their BatchNorm statistics are
        assert same(start[0], rec.seen[step][0], "weight") and same(start[1], rec.seen[step][1], "weight")
        assert not same(start[0], rec.seen[step][0], "running_mean")
        assert not same(start[2], rec.seen[step][2], "weight")
    assert not same(start[0], rec.seen[3][0], "weight")  # step 3 updates them


def test_stopbackward_steps_shrink_with_the_schedule():
    from yolo.trainer import StopBackward

    model = Darknet(MICRO)
    model.module_list[0].stopbackward, model.module_list[2].stopbackward = 1, 800
    assert StopBackward.of(model, 8000, 100) == StopBackward(0, 1, ((2, 10),))
    assert StopBackward.of(model, 8000, 8000) == StopBackward(0, 1, ((2, 800),))
    model.module_list[2].stopbackward = 0
    assert StopBackward.of(Darknet(MICRO)) == StopBackward()


def test_onlyforward_lets_no_gradient_through(tmp_path, shapes, monkeypatch):
    mark(monkeypatch, {1: ("onlyforward", 1)})
    t = trainer(tmp_path, micro_cfg(tmp_path), shapes)
    t.wrapped.train()
    out = t.wrapped(torch.rand(1, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is None for b in list(t.model.module_list)[:2] for p in b.parameters())
    assert all(p.grad is not None for p in t.model.module_list[2].parameters())
    t.wrapped.eval()
    assert t.wrapped(torch.rand(1, 3, 64, 64)).requires_grad  # inference: nothing detached


# --- declared keys: accepted, and refused at training where they would change it ------------
def test_the_declared_keys_are_unique_and_explained():
    from yolo.params import CFG_KEYS, PARAMS

    assert len({(k.section, k.key) for k in CFG_KEYS}) == len(CFG_KEYS)
    assert all(k.why for k in CFG_KEYS)
    param_keys = {(p.section, p.key) for p in PARAMS if p.section}
    assert not param_keys & {(k.section, k.key) for k in CFG_KEYS}  # a key is a Param or declared, not both


def test_declared_keys_build_without_warnings_and_the_trainer_refuses_training_ones(tmp_path, shapes):
    import warnings

    from yolo.cfg import UnusedKeyWarning
    from yolo.trainer import TrainSetupError

    net = "max_crop=448\nmin_crop=224\naspect=.75\nlabel_smooth_eps=.1\nmax_epochs=300\nseen=64\nblur=0\n"
    yolo = "uc_normalizer=0.07\nbeta1=0.6\nfocal_loss=0\ndelta_normalizer=1.0\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedKeyWarning)
        m = Darknet(micro_cfg(tmp_path, net, yolo=yolo))
    assert m.net.training_problems() == [] and m.heads[0].training_problem() is None
    trainer(tmp_path / "ok", tmp_path / "micro.cfg", shapes)  # inert values: trains
    with pytest.raises(TrainSetupError, match=r"micro\.cfg:\d+: \[net\] key 'cutmix': cutmix=1 \(CutMix "
                                              r"augmentation\) is not implemented by the trainer"):
        trainer(tmp_path / "a", micro_cfg(tmp_path, "cutmix=1"), shapes)
    with pytest.raises(TrainSetupError, match=r"micro\.cfg:\d+: \[yolo\]: line \d+: focal_loss=1 \(the focal loss"):
        trainer(tmp_path / "b", micro_cfg(tmp_path, yolo="focal_loss=1"), shapes)
    with pytest.raises(TrainSetupError, match="contrastive=1"):
        trainer(tmp_path / "c", micro_cfg(tmp_path, "contrastive=1"), shapes)
