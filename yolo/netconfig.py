"""The [net] section: input geometry and the training hyper-parameters, typed once."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cfg import Section

POLICIES = ("constant", "steps", "step", "exp", "poly", "sigmoid", "random", "sgdr")


@dataclass
class NetConfig:
    width: int = 416
    height: int = 416
    channels: int = 3
    batch: int = 1
    subdivisions: int = 1
    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0005
    burn_in: int = 0
    power: float = 4.0  # burn-in exponent, Darknet's default
    max_batches: int = 0
    policy: str = "constant"
    steps: list[int] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    angle: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    hue: float = 0.0
    letter_box: bool = False
    mosaic: bool = False
    flip: bool = True
    section: Section | None = None

    @classmethod
    def from_section(cls, s: Section) -> "NetConfig":
        d = cls()
        net = cls(
            width=s.int("width", d.width), height=s.int("height", d.height),
            channels=s.int("channels", d.channels), batch=s.int("batch", d.batch),
            subdivisions=s.int("subdivisions", d.subdivisions),
            learning_rate=s.float("learning_rate", d.learning_rate),
            momentum=s.float("momentum", d.momentum), decay=s.float("decay", d.decay),
            burn_in=s.int("burn_in", d.burn_in), power=s.float("power", d.power),
            max_batches=s.int("max_batches", d.max_batches),
            policy=s.choice("policy", POLICIES, d.policy),
            steps=s.ints("steps", []), scales=s.floats("scales", []),
            angle=s.float("angle", d.angle), saturation=s.float("saturation", d.saturation),
            exposure=s.float("exposure", d.exposure), hue=s.float("hue", d.hue),
            letter_box=s.bool("letter_box", d.letter_box), mosaic=s.bool("mosaic", d.mosaic),
            flip=s.bool("flip", d.flip), section=s,
        )
        if net.width < 1 or net.height < 1 or net.channels < 1:
            raise s.error(f"width, height and channels must be positive, got "
                          f"{net.width}, {net.height}, {net.channels}")
        if net.batch < 1 or net.subdivisions < 1 or net.batch % net.subdivisions:
            raise s.error(f"batch={net.batch} must be a positive multiple of subdivisions={net.subdivisions}",
                          "subdivisions")
        if net.policy == "steps" and len(net.steps) != len(net.scales):
            raise s.error(f"{len(net.steps)} steps but {len(net.scales)} scales", "scales")
        return net
