"""A seeded fuzz suite: cfgs and .weights damaged the way users damage them.

Every case must either build and run a forward at a small size, or fail with our own error
type (ConfigError / WeightsError) whose message names the file. Anything else (a raw
IndexError, OverflowError, a PyTorch allocator or shape error ...) fails the test and is
listed. Run with ``-s`` to see the counts per cfg.
"""
from __future__ import annotations

import random
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import ConfigError, Darknet, WeightsError

from helpers import FIXTURES, ROOT, randomize

CFGS = sorted((ROOT / "cfg").glob("*.cfg")) + [FIXTURES / "tiny.cfg", FIXTURES / "train_tiny.cfg"]
BIG = 20_000_000  # parameters: such cfgs take ~1 s to build, so they get fewer cases
CASES_SMALL, CASES_BIG = 60, 4
MAX_BYTES = 2 << 30  # a network needing more than 2 GiB at its [net] size is refused, not allocated

NUMBERS = ["0", "-1", "-7", "1", "2", "3", "5", "1000000", "1e99", "inf", "nan", "-inf", "99999999999", "0.5",
           "1e-30", "-0"]
GARBAGE = ["abc", "", ",,", "1,a", "[x]", "=", "0x10", "1 2", "1;", "\u00e9t\u00e9", "None", "3,,4"]
HEADERS = ["[convolutional", "[unknownsec]", "[]", "net]", "[ yolo ]", "[Route]", "[net]"]


def mutate(text: str, rng: random.Random) -> tuple[str, bytes | None]:
    """One random damage of cfg text; returns (kind, new file bytes)."""
    lines = text.splitlines()
    headers = [i for i, l in enumerate(lines) if l.strip().startswith("[")]
    valued = [i for i, l in enumerate(lines) if "=" in l and not l.strip().startswith("#")]
    kind = rng.choice(["del line", "dup line", "del section", "dup section", "number", "number", "number",
                       "garbage", "truncate", "binary", "unknown key", "header", "swap sections"])
    i = rng.randrange(len(lines))
    if kind == "del line":
        del lines[i]
    elif kind == "dup line":
        lines.insert(i, lines[i])
    elif kind in ("del section", "dup section", "swap sections") and len(headers) > 2:
        k = rng.randrange(1, len(headers))
        a, b = headers[k], headers[k + 1] if k + 1 < len(headers) else len(lines)
        block = lines[a:b]
        if kind == "del section":
            del lines[a:b]
        elif kind == "dup section":
            lines[b:b] = block
        else:
            k2 = rng.randrange(1, len(headers))
            a2 = headers[k2]
            del lines[a:b]
            pos = a2 if a2 < a else max(a, a2 - len(block))
            lines[pos:pos] = block
    elif kind == "number" and valued:
        j = rng.choice(valued)
        key, value = lines[j].split("=", 1)
        numbers = list(re.finditer(r"-?\d+(\.\d+)?", value))
        if numbers:
            m = rng.choice(numbers)
            value = value[:m.start()] + rng.choice(NUMBERS) + value[m.end():]
        lines[j] = f"{key}={value}"
    elif kind == "garbage" and valued:
        j = rng.choice(valued)
        lines[j] = lines[j].split("=", 1)[0] + "=" + rng.choice(GARBAGE)
    elif kind == "unknown key" and headers:
        lines.insert(rng.choice(headers) + 1, "foo_bar=1")
    elif kind == "header" and headers:
        lines[rng.choice(headers)] = rng.choice(HEADERS)
    data = ("\n".join(lines) + "\n").encode()
    if kind == "truncate":
        data = data[:rng.randrange(len(data))]
    elif kind == "binary":
        pos = rng.randrange(len(data))
        data = data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))) + data[pos:]
    return kind, data


def run_cfg(path: Path) -> str:
    """'built' (and ran a forward) or 'clear error'; anything else raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Darknet(path, max_bytes=MAX_BYTES)
        s = model.max_stride  # a small input: up to 4 cells of the deepest map, at most the [net] size
        h, w = (s * max(1, min(4, n // s)) for n in (model.net.height, model.net.width))
        with torch.no_grad():
            model.eval()(torch.rand(1, model.net.channels, h, w))
        return "built"
    except (ConfigError, WeightsError) as e:
        if str(path) not in str(e):
            raise AssertionError(f"our error does not name the file: {e}") from None
        return "clear error"


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.name)
def test_damaged_cfgs_build_or_fail_clearly(cfg, tmp_path):
    text = cfg.read_text()
    with torch.device("meta"):  # counting parameters allocates nothing
        big = sum(p.numel() for p in Darknet(cfg, warn_unused=False).parameters()) > BIG
    rng = random.Random(f"{cfg.name}:0")
    counts: Counter = Counter()
    other = []
    for n in range(CASES_BIG if big else CASES_SMALL):
        kind, data = mutate(text, rng)
        path = tmp_path / f"case{n}.cfg"
        path.write_bytes(data)
        try:
            counts[run_cfg(path)] += 1
        except Exception as e:  # noqa: BLE001 - what the fuzz suite exists to find
            counts["other"] += 1
            other.append(f"case {n} ({kind}): {type(e).__name__}: {str(e)[:300]}")
    print(f"\n{cfg.name}: {sum(counts.values())} cases, {counts['built']} built fine, "
          f"{counts['clear error']} clear errors, {counts['other']} other")
    assert not other, "\n".join(other)
    assert big or (counts["built"] and counts["clear error"])  # the mutations do both kinds of damage


def test_absurd_sizes_are_refused_before_allocation(tmp_path):
    """filters=100000 or a huge upsample: our error with the figure, not the allocator's."""
    base = (FIXTURES / "tiny.cfg").read_text()
    big_filters = re.sub(r"filters=16", "filters=10000000", base, count=1)
    huge_upsample = "[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=8\nsize=1\n[upsample]\nstride=100000\n"
    for text, where in ((big_filters, "[convolutional]"), (huge_upsample, "[upsample]")):
        path = tmp_path / "absurd.cfg"
        path.write_text(text)
        with pytest.raises(ConfigError, match="GiB") as e:
            Darknet(path, max_bytes=MAX_BYTES)
        assert str(path) in str(e.value) and where in str(e.value)


@pytest.mark.slow
def test_damaged_weights_load_or_fail_clearly(tmp_path):
    cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
    torch.manual_seed(0)
    good = tmp_path / "good.weights"
    randomize(Darknet(cfg)).save_darknet_weights(good)
    data = good.read_bytes()
    fastest = (ROOT / "weights" / "yolo-fastest-1.1.weights").read_bytes()
    rng = random.Random("weights")
    counts: Counter = Counter()
    other = []
    model = Darknet(cfg)
    for n in range(120):
        kind = rng.choice(["truncate", "extra", "version", "junk header", "junk body", "empty", "other model"])
        d = bytearray(data)
        if kind == "truncate":
            d = d[:rng.randrange(len(d))]
        elif kind == "extra":
            d += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif kind == "version":
            d[:12] = np.array([rng.choice([0, 1, 2, 9, -1, 1000]) for _ in range(3)], np.int32).tobytes()
        elif kind == "junk header":
            d[:rng.randrange(1, 24)] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
        elif kind == "junk body":
            pos = rng.randrange(20, len(d) - 8)
            d[pos:pos + 8] = bytes(rng.randrange(256) for _ in range(8))
        elif kind == "empty":
            d = bytearray()
        else:
            d = bytearray(fastest)
        path = tmp_path / f"case{n}.weights"
        path.write_bytes(bytes(d))
        try:
            model.load_darknet_weights(path)
            counts["loaded"] += 1
        except WeightsError as e:
            counts["clear error"] += 1
            if str(path) not in str(e):
                other.append(f"case {n} ({kind}): error does not name the file: {e}")
        except Exception as e:  # noqa: BLE001
            counts["other"] += 1
            other.append(f"case {n} ({kind}): {type(e).__name__}: {e}")
    print(f"\nweights: {sum(counts.values())} cases, {counts['loaded']} loaded, "
          f"{counts['clear error']} clear errors, {counts['other']} other")
    assert not other, "\n".join(other)
    assert counts["loaded"] and counts["clear error"]


@pytest.mark.parametrize("body, needles", [
    ("", ["no layers after [net]"]),
    ("[convolutional]\nfilters=inf\nsize=1\n", ["filters", "expected an integer", "'inf'"]),
    ("[convolutional]\nfilters=1e99\nsize=1\n", ["filters", "expected an integer"]),
    ("[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\n[convolutional]\nfilters=8\nsize=3\nstride=1\n"
     "[route]\nlayers=-1,-2\n", ["[route]", "cannot concatenate", "10x10", "8x8", ":6:", ":11:"]),
    ("[convolutional]\nfilters=8\nsize=3\nstride=1\n[shortcut]\nfrom=-2\n", ["refers to layer -2"]),
    ("[convolutional]\nfilters=8\nsize=1\n[convolutional]\nfilters=8\nsize=3\nstride=1\n[shortcut]\nfrom=-2\n",
     ["[shortcut]", "cannot add", "20x20", "18x18"]),
    ("[convolutional]\nfilters=14\nsize=7\nstride=8\n[yolo]\nmask=0,1\nanchors=4,4, 8,8\nclasses=2\nnum=2\n",
     ["must be multiples of the network's stride 8"]),  # a detector; a backbone takes any size (Darknet's)
    ("[maxpool]\nsize=40\nstride=1\npadding=0\n", ["[maxpool]", "shrinks"]),
])
def test_shape_errors_name_the_sections_and_sizes(tmp_path, body, needles):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nwidth=20\nheight=20\nchannels=3\n\n" + body)
    with pytest.raises(ConfigError) as e:
        Darknet(path, warn_unused=False)
    msg = str(e.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg


def test_binary_cfg_names_the_byte_offset(tmp_path):
    path = tmp_path / "junk.cfg"
    path.write_bytes(b"[net]\nwidth=32\n\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match=r"offset 15"):
        Darknet(path)


def test_forward_at_a_size_where_maps_vanish_is_refused_before_running(tmp_path):
    path = tmp_path / "k5.cfg"
    path.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\n"
                    "[convolutional]\nfilters=4\nsize=5\nstride=1\npad=0\n")
    model = Darknet(path, warn_unused=False).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4, 28, 28)
    with pytest.raises(ConfigError, match=r"k5.cfg:10: \[convolutional\].*shrinks to 0x0"):
        model(torch.rand(1, 3, 8, 8))
