"""Each hyper-parameter declared once (``yolo.params``): NetConfig, Hyp, Overrides, TrainOptions and the
train command's flags are derived from the table, and a value flows cfg -> Hyp, an override wins."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from yolo.cfg import parse_cfg_text
from yolo.cli.train import get_args_parser
from yolo.hyp import HYP_PARAMS, Hyp, Overrides, resolve_hyp
from yolo.netconfig import NetConfig
from yolo.params import PARAMS, Param, params
from yolo.trainer import AUGMENT_KEYS, TrainOptions


def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_every_flag_is_in_the_parser_and_in_the_options():
    actions = {a.option_strings[0]: a for a in get_args_parser()._actions if a.option_strings}
    for p in params(flagged=True):
        assert p.flag in actions, p.flag
        assert actions[p.flag].dest == p.option, p.flag
        assert p.option in names(TrainOptions), p.option
        a = actions[p.flag]
        if p.type is bool:
            assert isinstance(a, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)), p.flag
        else:
            assert a.type is (str if p.is_list else p.type), p.flag
        assert a.help == p.cli_help() and a.help, p.flag
    assert len({p.flag for p in PARAMS if p.flag}) == len(params(flagged=True))  # no flag declared twice


def test_classes_have_one_field_per_declared_param():
    assert names(Hyp) == [p.name for p in HYP_PARAMS]
    assert names(Overrides) == [p.option for p in HYP_PARAMS if p.flag]
    net_fields = set(names(NetConfig))
    assert {p.name for p in params(section="net")} <= net_fields
    assert net_fields - {p.name for p in PARAMS} == {"width", "height", "channels", "section"}  # geometry only
    assert AUGMENT_KEYS == ("jitter", "hue", "saturation", "exposure", "angle", "mosaic", "flip")


def test_net_defaults_are_the_declared_ones():
    net = NetConfig()
    for p in params(section="net"):
        assert getattr(net, p.name) == (list(p.default) if p.is_list else p.default), p.name
    assert (NetConfig.momentum, NetConfig.flip) == (0.9, True)  # class attributes (AugmentConfig reads them)
    a, b = NetConfig(), NetConfig()
    a.steps.append(1)
    assert b.steps == []


def test_options_default_to_not_given_unless_the_cfg_has_no_value():
    o = TrainOptions()
    assert (o.lr, o.momentum, o.steps, o.batch, o.jitter, o.mosaic) == (None,) * 6  # the cfg's
    assert (o.nesterov, o.ema_decay, o.sparsity, o.sparsity_decay) == (False, 0.9999, 0.0, 1.0)


def cfg_net(text: str) -> NetConfig:
    return NetConfig.from_section(parse_cfg_text("[net]\n" + text)[0])


def test_a_cfg_value_flows_to_hyp_and_an_override_wins():
    net = cfg_net("momentum=0.8\nlearning_rate=0.01\nbatch=16\nsubdivisions=2\npolicy=steps\nsteps=5,8\n"
                  "scales=.1,.5\nmax_batches=10\nhue=.2\nmosaic=1\nflip=0")
    assert (net.momentum, net.steps, net.scales, net.hue, net.mosaic, net.flip) == (0.8, [5, 8], [0.1, 0.5], 0.2,
                                                                                   True, False)
    assert Hyp.from_net(net).momentum == 0.8
    s = resolve_hyp(net, Overrides(), total_steps=10)
    assert (s["momentum"].value, s["momentum"].source) == (0.8, "cfg")
    opts = TrainOptions(momentum=0.95, steps="3,4", nesterov=True)
    s = resolve_hyp(net, opts.overrides(), total_steps=10)
    assert (s["momentum"].value, s["momentum"].source) == (0.95, "--momentum")
    assert (s["steps"].value, s["steps"].source) == ([3, 4], "--steps")
    assert (s["nesterov"].value, s["nesterov"].source) == (True, "--nesterov")
    assert list(s) == [p.name for p in HYP_PARAMS]  # the settings table's order is the declaration's


def test_a_bad_cfg_value_names_its_key():
    with pytest.raises(ValueError, match="momentum"):
        cfg_net("momentum=fast")
    with pytest.raises(ValueError, match="policy"):
        cfg_net("policy=cosine")


def test_the_command_line_parses_declared_types():
    args = get_args_parser().parse_args(["--momentum", "0.7", "--steps", "4,5", "--no-flip", "--nesterov"])
    assert (args.momentum, args.steps, args.flip, args.nesterov, args.lr) == (0.7, "4,5", False, True, None)


def test_a_malformed_declaration_is_refused():
    with pytest.raises(ValueError, match="hyper-parameter gamma: type <class 'dict'>"):
        Param("gamma", dict, {}, "net", "--gamma")
    with pytest.raises(ValueError, match="hyper-parameter gamma: group 'optimiser'"):
        Param("gamma", float, 0.1, "net", "--gamma", group="optimiser")
    with pytest.raises(ValueError, match="hyper-parameter gamma: flag 'gamma' does not start with --"):
        Param("gamma", float, 0.1, "net", "gamma")
