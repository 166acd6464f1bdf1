"""A sweep's search space (`--space KEY=SPEC`) and its samplers: random, grid and Sobol, all seeded.

SPEC is `loguniform:LOW:HIGH`, `uniform:LOW:HIGH`, `int:LOW:HIGH` (both ends included) or `choice:A,B,...`
(values read as YAML, like `--set`). Keys are ultralytics train arguments, checked like `--set`, or one of the
training fields a trial may vary (`batch`, `imgsz`). The same space, sampler, count and seed always give the
same trials.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from yolokf.core.errors import UsageError
from yolokf.core.settings import SWEEPABLE_FIELDS, TrainConfig

KINDS = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("random", "grid", "sobol")
_EXAMPLE = "for example --space lr0=loguniform:1e-4:1e-1 or --space mosaic=choice:0,0.5,1.0"


@dataclass(frozen=True)
class Dimension:
    """One searched setting."""

    key: str
    kind: str  # one of KINDS
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(c) for c in self.choices)
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return f"{self.kind}:{low}:{high}"

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def values(self) -> tuple[Any, ...] | None:
        """Every value, for a grid; None for a continuous range."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1))
        return None

    def at(self, u: float) -> Any:
        """The value at quantile `u` in [0, 1)."""
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        if self.kind == "loguniform":
            return float(f"{math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))):.6g}")
        if self.kind == "uniform":
            return float(f"{self.low + u * (self.high - self.low):.6g}")
        values = self.values()
        assert values is not None
        return values[int(u * len(values))]


def parse_space(items: list[str], base: TrainConfig) -> tuple[Dimension, ...]:
    """Parse repeated `--space KEY=SPEC` and check every value it can take against ultralytics' rules."""
    if not items:
        raise UsageError(f"Give the search space with --space KEY=SPEC, {_EXAMPLE}.")
    space: dict[str, Dimension] = {}
    for item in items:
        dimension = _parse_one(item)
        if dimension.key in space:
            raise UsageError(f"--space {dimension.key} is given twice; give each key once.")
        for value in _extremes(dimension):
            try:
                base.with_values({dimension.key: value})
            except UsageError as exc:
                raise UsageError(f"--space {item}: {_as_space_error(str(exc), dimension.key)}") from None
        space[dimension.key] = dimension
    return tuple(space.values())


def _parse_one(item: str) -> Dimension:
    key, sep, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise UsageError(f"--space {item!r} is not KEY=SPEC; {_EXAMPLE}.")
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise UsageError(f"--space {item}: unknown range kind {kind!r}; use one of {', '.join(KINDS)} ({_EXAMPLE}).")
    if kind == "choice":
        import yaml

        raw = [part.strip() for part in rest.split(",")]
        if not rest.strip() or not all(raw):
            raise UsageError(f"--space {item}: choice needs values separated by commas, e.g. {key}=choice:0,0.5,1.0.")
        values = []
        for part in raw:
            try:
                values.append(yaml.safe_load(part))
            except yaml.YAMLError:
                values.append(part)
        return Dimension(key, kind, choices=tuple(values))
    bounds = rest.split(":")
    try:
        if len(bounds) != 2:
            raise ValueError
        low, high = (int(b) for b in bounds) if kind == "int" else (float(b) for b in bounds)
    except ValueError:
        number = "whole numbers" if kind == "int" else "numbers"
        raise UsageError(f"--space {item}: {kind} needs LOW:HIGH, two {number}, e.g. {key}={kind}:1:4.") from None
    if kind == "int" and high < low:
        raise UsageError(f"--space {item}: the range is empty; give LOW <= HIGH.")
    if kind != "int" and not low < high:
        raise UsageError(f"--space {item}: the range is empty; give LOW < HIGH.")
    if kind == "loguniform" and low <= 0:
        raise UsageError(f"--space {item}: loguniform needs LOW > 0; use uniform for a range from 0.")
    return Dimension(key, kind, low=low, high=high)


def _extremes(dimension: Dimension) -> tuple[Any, ...]:
    if dimension.kind == "choice":
        return dimension.choices
    if dimension.kind == "int":
        return (int(dimension.low), int(dimension.high))
    return (dimension.low, dimension.high)


def _as_space_error(message: str, key: str) -> str:
    """`--set`'s wording turned into the sweep's: the key is the same, the flag differs."""
    if "has its own flag" in message:
        sweepable = ", ".join(SWEEPABLE_FIELDS)
        return f"{key} cannot vary between trials; a sweep varies ultralytics train arguments and {sweepable}."
    return message.removeprefix("--set ")


def sample(space: tuple[Dimension, ...], trials: int, sampler: str, seed: int) -> list[dict[str, Any]]:
    """`trials` value sets drawn from `space`: reproducible for the same arguments."""
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}.")
    keys = [d.key for d in space]
    if sampler == "grid":
        axes = [d.values() for d in space]
        continuous = [d.key for d, axis in zip(space, axes, strict=True) if axis is None]
        if continuous:
            raise UsageError(
                f"--sampler grid needs choice: or int: ranges; {', '.join(continuous)} "
                "is continuous. Use --sampler random or sobol, or list values with choice:."
            )
        size = math.prod(len(axis) for axis in axes if axis is not None)
        if size > trials:
            raise UsageError(
                f"--sampler grid has {size} combinations, more than --trials {trials}: "
                f"give --trials {size}, or fewer values."
            )
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*[a for a in axes if a is not None])]
    if sampler == "sobol":
        points = sobol(len(space), trials, seed)
    else:
        import random

        rng = random.Random(seed)
        points = [[rng.random() for _ in space] for _ in range(trials)]
    return [{d.key: d.at(u) for d, u in zip(space, point, strict=True)} for point in points]


# Joe & Kuo's direction numbers (new-joe-kuo-6.21201) for dimensions 2..13: (s, a, m_1..m_s). The first dimension
# is the van der Corput sequence. torch.quasirandom.SobolEngine uses the same table (tests compare the two).
_JOE_KUO = (
    (1, 0, (1,)),
    (2, 1, (1, 3)),
    (3, 1, (1, 3, 1)),
    (3, 2, (1, 1, 1)),
    (4, 1, (1, 1, 3, 3)),
    (4, 4, (1, 3, 5, 13)),
    (5, 2, (1, 1, 5, 5, 17)),
    (5, 4, (1, 1, 5, 5, 5)),
    (5, 7, (1, 1, 7, 11, 19)),
    (5, 11, (1, 1, 5, 1, 1)),
    (5, 13, (1, 1, 1, 3, 11)),
    (5, 14, (1, 3, 5, 5, 31)),
)
_BITS = 32


def _directions(dimension: int) -> list[int]:
    if dimension == 0:
        return [1 << (_BITS - 1 - i) for i in range(_BITS)]
    s, a, m = _JOE_KUO[dimension - 1]
    v = [m[i] << (_BITS - 1 - i) for i in range(s)] + [0] * (_BITS - s)
    for i in range(s, _BITS):
        value = v[i - s] ^ (v[i - s] >> s)
        for k in range(1, s):
            if (a >> (s - 1 - k)) & 1:
                value ^= v[i - k]
        v[i] = value
    return v


def sobol(dimensions: int, count: int, seed: int | None) -> list[list[float]]:
    """`count` points of the Sobol sequence in [0, 1)^dimensions (Gray-code order, from the origin), shifted by a
    seeded random digital shift (None: unshifted), which keeps its even spread and makes each seed a new sequence."""
    if dimensions > len(_JOE_KUO) + 1:
        raise UsageError(f"--sampler sobol varies at most {len(_JOE_KUO) + 1} settings; use --sampler random.")
    import random

    directions = [_directions(d) for d in range(dimensions)]
    rng = random.Random(seed)
    shifts = [rng.getrandbits(_BITS) if seed is not None else 0 for _ in range(dimensions)]
    state = [0] * dimensions
    points = []
    for n in range(count):
        points.append([(x ^ shift) / 2**_BITS for x, shift in zip(state, shifts, strict=True)])
        lowest_zero = (~n & (n + 1)).bit_length() - 1
        state = [x ^ v[lowest_zero] for x, v in zip(state, directions, strict=True)]
    return points
