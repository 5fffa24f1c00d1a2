"""Fit the log-distance path-loss model to RSSI measured at known distances; pure, no I/O.

An entrance is measured by holding a reference phone at a few known distances from the
gateway and recording what it hears (`bluezone-gateway calibrate`). The model is the one the
simulator uses (`gateway.simulate.Radio`)::

    rssi(d) = rssi_1m - 10 * path_loss_exponent * log10(d / 1 m)  +  noise (σ = sigma_db)

The fit takes the median RSSI at each distance, which a few reflections (multipath, a body
in the way for a moment) barely move, and fits a straight line through those medians against
``log10(d)`` by least squares, every distance weighted alike. The spread ``sigma_db`` is the
standard deviation of every single advert's RSSI about that line.

The thresholds for a zone of radius R (`propose`):

- ``enter_rssi`` is the model's mean RSSI at ``ZONE_STRETCH`` x R (1.15 R), rounded to a whole
  dBm. The presence engine (`gateway.presence`) enters a phone only once its smoothed mean
  clears ``enter_rssi`` by ``confidence_z`` standard errors: about 1.9 dB for a Bluezone
  Android phone heard 8 times a second at the defaults, more for one heard rarely or briefly
  (a visitor walking through). That pulls the edge the engine keeps inwards, by 15-20 % of
  the radius at usual exponents, so the threshold is set that much further out. Setting it at
  R itself costs recall on small zones (0.94 on the simulator at R = 2 m, exponent 2.8);
  compensating the full margin costs precision in noisy lobbies (0.91 at σ = 8 dB), where
  people waiting twice the radius away drift in. 1.15 R sits between the two on every
  parameter set tried (tests/test_calibrate.py).
- ``exit_rssi`` is ``enter_rssi`` minus the configuration's default hysteresis (3 dB).
- ``rssi_sigma_db`` is the measured spread plus 0.5 dB (`SIGMA_HEADROOM_DB`), rounded up to
  a whole dB, and never below the default 6 dB. The engine's standard error assumes
  independent adverts, while slow fading (a body, a door) makes neighbouring adverts alike;
  the default 6 dB is already above the 5.4 dB a still phone spreads in the simulator's
  default lobby, and that padding is kept. A noisier entrance needs the larger value: at
  σ = 8 dB the default lets waiting people in (precision 0.91-0.95 on the simulator), 9 dB
  does not (0.98-0.99).

No rule rescues a very flat entrance: at an exponent of 1.8 (a corridor), people waiting at
twice the radius are only 5.4 dB weaker than the zone's edge, and on the simulator no single
``enter_rssi`` gets both precision and recall to 0.97 there. Shrink the zone, or mount the
gateway where the lobby is further away or shielded.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Item, Key, Table, Whitespace

from gateway.decode import decode_advert
from gateway.model import Advert, GatewayError, Platform, PresencePolicy, Sighting

MIN_DISTANCES: Final = 2
"""A line needs two points; three or more also show how well the model fits."""
MIN_ADVERTS: Final = 10
"""Adverts of the reference phone needed at one distance: a median of fewer is noise."""
TYPICAL_EXPONENTS: Final = (1.4, 4.0)
"""Indoor path-loss exponents outside this range hint at a mislabelled distance or a wrong
phone (free space is 2; corridors guide waves below it, cluttered offices go to 3-4)."""
ZONE_STRETCH: Final = 1.15
"""``enter_rssi`` is the mean RSSI at this many zone radii (module docstring)."""
WEAK_MEDIAN_DBM: Final = -88.0
"""A median weaker than this is near the sensitivity of BLE receivers (datasheets typically
quote -90 to -97 dBm; the simulator uses -100): the weakest adverts go unheard, so the median
reads too strong and the fitted exponent too flat."""
RESIDUAL_WARN_DB: Final = 3.0
"""A distance whose median is this far off the line was probably mis-measured (or shadowed)."""
SIGMA_HEADROOM_DB: Final = 0.5
"""Added to the measured spread before rounding up: four one-minute samples measure it to
about ±0.3 dB, and low rather than high (fading is sampled slowly), so a true 8.2 dB can read
7.9; rounded up to 8 that let waiting people in on the simulator, where 9 did not."""
HYSTERESIS_DB: Final = PresencePolicy().enter_rssi - PresencePolicy().exit_rssi
"""The configuration's default gap between ``enter_rssi`` and ``exit_rssi`` (3 dB)."""
DEFAULT_SIGMA_DB: Final = PresencePolicy().rssi_sigma_db
"""The engine's default ``rssi_sigma_db`` (6 dB): the floor of the proposed value."""
PRESENCE_KEYS: Final = ("enter_rssi", "exit_rssi", "rssi_sigma_db")


class CalibrationError(GatewayError):
    """Measurements that cannot be fitted; says which and why."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The reference phone's RSSI values recorded at one distance."""

    distance_m: float
    rssi: Sequence[float]
    source: str = ""
    """Where they came from (a capture file, ``live``), for messages."""


@dataclass(frozen=True, slots=True)
class Point:
    """One distance of the fit: its median RSSI and how far the line passes from it."""

    distance_m: float
    adverts: int
    median_rssi: float
    residual_db: float
    """Median minus the fitted line at this distance."""
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PathLoss:
    """The fitted log-distance model."""

    rssi_1m: float
    """Mean RSSI of the reference phone 1 m from the gateway (dBm)."""
    path_loss_exponent: float
    sigma_db: float
    """Standard deviation of single adverts about the model (dB)."""
    points: tuple[Point, ...] = field(default=())

    def mean_rssi(self, distance_m: float) -> float:
        """Return the model's mean RSSI at ``distance_m``."""
        return self.rssi_1m - 10 * self.path_loss_exponent * math.log10(distance_m)

    def distance(self, rssi: float) -> float:
        """Return the distance at which the model's mean RSSI is ``rssi``."""
        return 10 ** ((self.rssi_1m - rssi) / (10 * self.path_loss_exponent))


@dataclass(frozen=True, slots=True)
class Proposal:
    """``[presence]`` values for a zone of radius ``zone_m``."""

    zone_m: float
    enter_rssi: float
    exit_rssi: float
    rssi_sigma_db: float

    def presence(self) -> dict[str, float]:
        """Return the ``[presence]`` keys and values."""
        return {
            "enter_rssi": self.enter_rssi,
            "exit_rssi": self.exit_rssi,
            "rssi_sigma_db": self.rssi_sigma_db,
        }

    def snippet(self, model: PathLoss) -> str:
        """Return the ``[presence]`` section to paste into a configuration, with comments."""
        return (
            "[presence]\n"
            f"# calibrated: {model.rssi_1m:.1f} dBm at 1 m, path-loss exponent"
            f" {model.path_loss_exponent:.2f}, spread {model.sigma_db:.1f} dB\n"
            f"# a {self.zone_m:g} m zone: enter at the mean RSSI"
            f" {ZONE_STRETCH:g} x {self.zone_m:g} m away, exit {HYSTERESIS_DB:g} dB lower\n"
            f"enter_rssi = {whole(self.enter_rssi)}\n"
            f"exit_rssi = {whole(self.exit_rssi)}\n"
            f"rssi_sigma_db = {whole(self.rssi_sigma_db)}\n"
        )


def fit(samples: Iterable[Sample]) -> PathLoss:
    """Fit the model to samples at two or more distinct distances.

    Samples at the same distance are pooled.

    Raises:
        CalibrationError: see `require_distances`; a sample with too few adverts; RSSI that
            does not fall with distance.
    """
    samples = list(samples)
    require_distances([s.distance_m for s in samples])
    pooled: dict[float, list[float]] = defaultdict(list)
    sources: dict[float, list[str]] = defaultdict(list)
    for sample in samples:
        where = f" ({sample.source})" if sample.source else ""
        if len(sample.rssi) < MIN_ADVERTS:
            msg = (
                f"only {len(sample.rssi)} adverts of the reference phone at"
                f" {sample.distance_m:g} m{where}; at least {MIN_ADVERTS} are needed"
            )
            raise CalibrationError(msg)
        pooled[sample.distance_m].extend(sample.rssi)
        sources[sample.distance_m].append(sample.source)
    distances = sorted(pooled)
    xs = [math.log10(d) for d in distances]
    medians = [statistics.median(pooled[d]) for d in distances]
    # Ordinary least squares of the medians against log10(d): slope = -10 n, intercept = rssi_1m.
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(medians)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, medians, strict=True)) / sxx
    intercept = y_mean - slope * x_mean
    if slope >= 0:
        pairs = ", ".join(
            f"{m:.1f} dBm at {d:g} m" for d, m in zip(distances, medians, strict=True)
        )
        msg = (
            f"the reference phone's RSSI does not fall with distance ({pairs}): check the"
            " distances given and that the same phone was recorded"
        )
        raise CalibrationError(msg)
    residuals = [
        rssi - (intercept + slope * x)
        for d, x in zip(distances, xs, strict=True)
        for rssi in pooled[d]
    ]
    # Two parameters were fitted, so two degrees of freedom are gone (n is in the hundreds).
    sigma = math.sqrt(sum(r * r for r in residuals) / max(len(residuals) - 2, 1))
    points = tuple(
        Point(d, len(pooled[d]), m, m - (intercept + slope * x), tuple(sources[d]))
        for d, x, m in zip(distances, xs, medians, strict=True)
    )
    return PathLoss(intercept, -slope / 10, sigma, points)


def require_distances(distances: Sequence[float]) -> None:
    """Check that the distances can give a fit, before anything is measured.

    Raises:
        CalibrationError: a distance that is not positive, or fewer than two distinct ones.
    """
    for d in distances:
        if not (math.isfinite(d) and d > 0):
            msg = f"distance {d:g} m must be a positive number of metres"
            raise CalibrationError(msg)
    distinct = sorted(set(distances))
    if len(distinct) < MIN_DISTANCES:
        found = ", ".join(f"{d:g} m" for d in distinct) or "none"
        msg = (
            f"samples at {MIN_DISTANCES} or more distinct distances are needed to fit the"
            f" path-loss exponent (found: {found})"
        )
        raise CalibrationError(msg)


def propose(model: PathLoss, zone_m: float) -> Proposal:
    """Return the ``[presence]`` thresholds for a zone of radius ``zone_m`` (module docstring).

    Raises:
        CalibrationError: ``zone_m`` is not positive, or the thresholds leave the RSSI range.
    """
    if not (math.isfinite(zone_m) and zone_m > 0):
        msg = f"the zone radius must be a positive number of metres, got {zone_m:g}"
        raise CalibrationError(msg)
    enter = float(round(model.mean_rssi(ZONE_STRETCH * zone_m)))
    exit_ = enter - HYSTERESIS_DB
    sigma = max(float(math.ceil(model.sigma_db + SIGMA_HEADROOM_DB)), DEFAULT_SIGMA_DB)
    try:
        PresencePolicy(enter_rssi=enter, exit_rssi=exit_, rssi_sigma_db=sigma)
    except ValueError as e:
        msg = f"no usable thresholds for a {zone_m:g} m zone: {e}"
        raise CalibrationError(msg) from None
    return Proposal(zone_m, enter, exit_, sigma)


def caveats(model: PathLoss, zone_m: float) -> list[str]:
    """Return what the operator should know about a fit before trusting it (may be empty)."""
    out = []
    low, high = TYPICAL_EXPONENTS
    if not low <= model.path_loss_exponent <= high:
        out.append(
            f"path-loss exponent {model.path_loss_exponent:.2f} is unusual indoors"
            f" ({low:g}-{high:g}): check the distances and that the reference phone was"
            " the one recorded"
        )
    distances = [p.distance_m for p in model.points]
    if distances and not min(distances) <= zone_m <= max(distances):
        out.append(
            f"the {zone_m:g} m zone is outside the measured"
            f" {min(distances):g}-{max(distances):g} m: the thresholds are extrapolated;"
            " measure at the zone's edge too"
        )
    if len(distances) < 3:
        out.append("two distances fit any line: measure at three or more to see how well it fits")
    for p in model.points:
        if p.median_rssi < WEAK_MEDIAN_DBM:
            out.append(
                f"at {p.distance_m:g} m the median is {p.median_rssi:.1f} dBm, near the receiver's"
                " sensitivity: the weakest adverts are lost and the fit reads too strong there;"
                " measure closer"
            )
        if abs(p.residual_db) > RESIDUAL_WARN_DB:
            out.append(
                f"at {p.distance_m:g} m the median is {p.residual_db:+.1f} dB off the fitted line:"
                " re-measure that distance (a body or metal in the way?)"
            )
    return out


@dataclass(frozen=True, slots=True)
class Reference:
    """The reference phone found among recorded adverts."""

    key: str
    """Its rolling ID (Bluezone Android) or address."""
    rssi: tuple[int, ...]
    candidates: int
    """Devices that could have been the reference phone (itself included)."""
    runner_up: int
    """Adverts of the most heard other candidate (0 when there is none)."""


def pick_reference(adverts: Iterable[Advert], address: str | None = None) -> Reference | None:
    """Return the reference phone's RSSI values among ``adverts``, or None when absent.

    Without ``address`` the reference phone is the Bluezone Android phone heard most, keyed by
    its rolling ID (its address changes at every advertising restart, protocol.md §1.3).
    ``address`` picks a device by address instead, or by rolling ID when it is 24 hex digits.
    """
    wanted = None if address is None else address.lower()
    heard: defaultdict[str, list[int]] = defaultdict(list)
    for advert in adverts:
        if wanted is not None and advert.address.lower() == wanted:
            heard[advert.address].append(advert.rssi)
            continue
        sighting = decode_advert(advert)
        if not isinstance(sighting, Sighting) or sighting.rolling_id is None:
            continue
        if wanted is None and sighting.platform is not Platform.ANDROID:
            continue
        if wanted is None or sighting.rolling_id == wanted:
            heard[sighting.rolling_id].append(sighting.rssi)
    if not heard:
        return None
    ranked = Counter({key: len(values) for key, values in heard.items()}).most_common(2)
    key = ranked[0][0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0
    return Reference(key, tuple(heard[key]), len(heard), runner_up)


class ConfigEditError(CalibrationError):
    """A configuration file that cannot be edited (not TOML, or [presence] is not a table)."""


def update_config(
    text: str, values: Mapping[str, float], where: str = "<config>", note: str | None = None
) -> str:
    """Return ``text`` with ``[presence]`` keys set to ``values``; comments and layout kept.

    The section is added at the end when the file has none; keys already there are changed
    in place, new ones appended to the section after the comment ``note``.

    Raises:
        ConfigEditError: ``text`` is not TOML, or ``presence`` is not a table.
    """
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        msg = f"{where}: not valid TOML: {e}"
        raise ConfigEditError(msg) from None
    section: Any = doc.get("presence")
    if section is None:
        section = tomlkit.table()
        if text and not text.endswith("\n\n"):
            doc.add(tomlkit.nl())
        doc.add("presence", section)
    elif not isinstance(section, Table):
        msg = f"{where}: presence must be a [presence] section"
        raise ConfigEditError(msg)
    # New keys go after the section's last key, not after the blank lines that end it.
    body = section.value.body
    trailing: list[tuple[Key | None, Item]] = []
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
        trailing.insert(0, body.pop())
    if note is not None and any(key not in section for key in values):
        section.add(tomlkit.comment(note))
    for key, value in values.items():
        section[key] = whole(value)
    body.extend(trailing)
    return tomlkit.dumps(doc)


def whole(value: float) -> int | float:
    """Return whole numbers as integers: ``enter_rssi = -76`` reads better than ``-76.0``."""
    return int(value) if float(value).is_integer() else value
