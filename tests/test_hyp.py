"""Hyper-parameter resolution: cfg -> overrides -> the run's plan, the lr schedule, multi-scale sizes."""
from __future__ import annotations

import dataclasses

import pytest

from yolo.hyp import (
    Hyp,
    HypError,
    Overrides,
    format_settings,
    lr_at,
    multiscale_range,
    multiscale_size,
    parse_floats,
    parse_ints,
    plan_run,
    resolve_hyp,
    shrink_schedule,
)
from yolo.netconfig import NetConfig


def make_hyp(**kw) -> Hyp:
    return dataclasses.replace(Hyp.from_net(NetConfig()), **kw)


# --- where values come from ------------------------------------------------------------------
def test_hyp_restates_no_net_default():
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(Hyp))
    net = NetConfig()
    hyp = Hyp.from_net(net)
    for f in dataclasses.fields(Hyp):
        if f.name != "nesterov":
            assert getattr(hyp, f.name) == getattr(net, f.name), f.name
    hyp.steps.append(5)  # a copy, not the cfg's list
    assert net.steps == []


def test_from_dict_refuses_another_layout():
    d = make_hyp().to_dict()
    assert Hyp.from_dict(d) == make_hyp()
    with pytest.raises(HypError, match="missing.*decay"):
        Hyp.from_dict({k: v for k, v in d.items() if k != "decay"})


def test_overrides_and_sources():
    net = NetConfig(learning_rate=0.01, burn_in=1000, max_batches=10000, policy="steps", steps=[8000, 9000],
                    scales=[0.1, 0.1], batch=64, subdivisions=16)
    s = resolve_hyp(net, Overrides(lr=0.002, batch=32), total_steps=100)
    assert (s["learning_rate"].value, s["learning_rate"].source) == (0.002, "--lr")
    assert (s["momentum"].value, s["momentum"].source) == (net.momentum, "cfg")
    assert (s["burn_in"].value, s["burn_in"].source) == (10, "shrunk from 1000")
    assert (s["steps"].value, s["steps"].source) == ([80, 90], "shrunk from 8000,9000")
    assert (s["max_batches"].value, s["max_batches"].source) == (100, "shrunk from 10000")
    assert (s["batch"].value, s["batch"].source) == (32, "--batch")
    assert (s["nesterov"].value, s["nesterov"].source) == (False, "default")


def test_an_override_beats_the_shrunk_value():
    net = NetConfig(burn_in=1000, max_batches=10000, policy="steps", steps=[8000], scales=[0.1])
    s = resolve_hyp(net, Overrides(burn_in=3, steps=[50]), total_steps=100)
    assert (s["burn_in"].value, s["burn_in"].source) == (3, "--burn-in")
    assert (s["steps"].value, s["steps"].source) == ([50], "--steps")


def test_steps_without_scales_are_refused():
    net = NetConfig(max_batches=100, policy="steps", steps=[80], scales=[0.1])
    with pytest.raises(HypError, match="2 steps but 1 scales"):
        resolve_hyp(net, Overrides(steps=[50, 60]), total_steps=100)


def test_unsupported_policy_is_refused():
    with pytest.raises(HypError, match="policy=random"):
        resolve_hyp(NetConfig(policy="random"), Overrides(), total_steps=10)


def test_lists_are_parsed_with_the_option_in_the_error():
    assert parse_ints("400, 450", "--steps") == [400, 450]
    assert parse_floats(".1,.5", "--scales") == [0.1, 0.5]
    assert parse_ints(None, "--steps") is None
    with pytest.raises(HypError, match="--steps: expected comma-separated integers, got '4x'"):
        parse_ints("4x", "--steps")


# --- the schedule shrinks to a short run ----------------------------------------------------
def test_shrink_schedule_is_proportional():
    assert shrink_schedule(4000, [400000, 450000], 500200, 1000) == (8, [800, 900], 1000)
    assert shrink_schedule(20, [320, 360], 400, 4) == (0, [3, 4], 4)
    assert shrink_schedule(5, [1, 2], 100, 10) == (0, [1, 1], 10)  # a step never falls before step 1


def test_shrink_schedule_keeps_a_long_enough_run_or_no_max_batches():
    assert shrink_schedule(100, [800], 1000, 1000) == (100, [800], 1000)
    assert shrink_schedule(100, [800], 1000, 5000) == (100, [800], 1000)
    assert shrink_schedule(100, [800], 0, 10) == (100, [800], 0)


# --- the run's plan ---------------------------------------------------------------------------
def test_plan_from_batch_and_subdivisions():
    p = plan_run(n_images=64, batch=16, subdivisions=2, epochs=3)
    assert (p.minibatch, p.accumulate, p.steps_per_epoch, p.epochs, p.total_steps) == (8, 2, 4, 3, 12)
    p = plan_run(n_images=64, batch=16, subdivisions=2, batch_size=4, epochs=1, world=2)
    assert (p.minibatch, p.accumulate, p.steps_per_epoch) == (4, 2, 4)  # 32 images per rank, 8 per step


def test_plan_without_epochs_lasts_max_batches():
    p = plan_run(n_images=64, batch=16, subdivisions=2, max_batches=10)
    assert (p.epochs, p.total_steps) == (3, 10)
    assert plan_run(n_images=64, batch=16, subdivisions=2, epochs=5, max_steps=7).total_steps == 7
    with pytest.raises(HypError, match="x.cfg has no max_batches: give --epochs"):
        plan_run(n_images=64, batch=16, subdivisions=1, cfg_name="x.cfg")
    with pytest.raises(HypError, match="positive"):
        plan_run(n_images=64, batch=16, subdivisions=1, batch_size=0, epochs=1)


# --- learning rate --------------------------------------------------------------------------
def test_burn_in_follows_the_power_curve():
    hyp = make_hyp(learning_rate=0.1, burn_in=10, power=4.0)
    assert lr_at(0, hyp) == pytest.approx(0.1 * (1 / 10) ** 4)
    assert lr_at(4, hyp) == pytest.approx(0.1 * 0.5 ** 4)
    assert lr_at(9, hyp) == pytest.approx(0.1)
    assert lr_at(50, hyp) == pytest.approx(0.1)
    lrs = [lr_at(i, hyp) for i in range(10)]
    assert lrs == sorted(lrs)


def test_steps_multiply_the_scales_passed():
    hyp = make_hyp(learning_rate=0.1, policy="steps", steps=[20, 30], scales=[0.1, 0.5])
    assert lr_at(19, hyp) == pytest.approx(0.1)
    assert lr_at(20, hyp) == pytest.approx(0.01)
    assert lr_at(29, hyp) == pytest.approx(0.01)
    assert lr_at(30, hyp) == pytest.approx(0.005)


def test_poly_decays_to_zero_after_burn_in():
    hyp = make_hyp(learning_rate=0.1, policy="poly", power=2.0, max_batches=100, burn_in=10)
    assert lr_at(5, hyp) == pytest.approx(0.1 * (6 / 10) ** 2)  # warm-up uses the same power
    assert lr_at(50, hyp) == pytest.approx(0.1 * 0.5 ** 2)
    assert lr_at(100, hyp) == 0.0


def test_constant_policy():
    hyp = make_hyp(learning_rate=0.1, policy="constant", steps=[5], scales=[0.1])
    assert lr_at(0, hyp) == lr_at(1000, hyp) == 0.1


# --- multi-scale ------------------------------------------------------------------------------
def test_multiscale_range_is_darknets_around_416():
    assert multiscale_range(416, 32) == (320, 608)
    lo, hi = multiscale_range(128, 32)
    assert lo % 32 == 0 and hi % 32 == 0 and lo <= 128 <= hi
    assert multiscale_range(32, 32)[0] == 32  # never below one stride


def test_multiscale_sizes_are_stride_multiples_in_range_and_change_every_10_steps():
    sizes = [multiscale_size(step, seed=0, lo=320, hi=608, stride=32) for step in range(400)]
    assert all(s % 32 == 0 and 320 <= s <= 608 for s in sizes)
    assert all(len(set(sizes[i:i + 10])) == 1 for i in range(0, 400, 10))
    assert len(set(sizes)) >= 5  # they do vary
    assert sizes == [multiscale_size(step, seed=0, lo=320, hi=608, stride=32) for step in range(400)]
    assert sizes != [multiscale_size(step, seed=1, lo=320, hi=608, stride=32) for step in range(400)]


def test_settings_table_is_aligned():
    text = format_settings([("learning_rate", 0.001, "cfg"), ("steps", [3, 4], "shrunk from 80,90"),
                            ("scales", [], "cfg")])
    lines = text.splitlines()
    assert lines[1].split() == ["steps", "3,4", "shrunk", "from", "80,90"]
    assert lines[2].split() == ["scales", "-", "cfg"]
    assert len({line.index(line.split()[1]) for line in lines}) == 1
