"""A simulated entrance: people and their phones passing the gateway, with the ground truth.

The gateway stands at the origin of a floor plan; the door is 12 m in front of it and the
offices 12 m behind. People arrive at random times and either stop at the desk (some holding
their phone to the gateway: a check-in), walk straight past it, or wait a while in the lobby
well outside the zone. Their phones advertise as protocol.md describes:

- Bluezone Android: 15 s on / 15 s off (60 s / 5 s while the app is in the foreground), 100 ms
  interval, a new random address at every advertising start, the rolling ID of protocol.md §3
  taken at that start (so it lags the quarter-hour boundary by up to one cycle), and on 3.0.7+
  the companion iBeacon (§1.5). Each start and stop is an alarm that Bluezone re-arms
  relative to the moment the previous one was handled (`AppScheduler.schedule`:
  ``System.currentTimeMillis() + intervalMillis``), so every phone's cycle runs a little long,
  by its own alarm latency (`Scenario.alarm_latency_s`): phones drift apart rather than
  keeping in step for hours;
- Bluezone iPhone: service UUID and name in the foreground (200 ms), the overflow frame in the
  background (1 s), address rotating every 15 min;
- GAEN: 250 ms, address and RPI rotating together every 10-20 min;
- BlueTrace: 1 s, 180 s on / 5 s off, new address at every start;
- phones without a tracing app (Apple continuity frames) and fixed unrelated devices.

RSSI follows the log-distance path-loss model with a per-phone offset, slow fading (an AR(1)
process: bodies and doors moving) and per-advert Gaussian noise; adverts are lost at random and
below the receiver's sensitivity.

The truth lists every visit as the gateway could know it: one per device key (rolling ID, RPI or
address) and stretch of time the phone was within ``zone_m`` of the gateway, with how many of
its adverts were delivered while it was surely inside (`Scenario.sure_m`). A visit with fewer
than `MIN_OBSERVABLE` such adverts (a phone that passed during its advertising pause, or was
heard only at the blurred edge of the zone) could not be told from noise by any receiver and
is marked ``observable: false``; scores report recall over observable visits and over all.

With ``reference_m`` set, a Bluezone Android phone with the app open is also held that far from
the gateway for the whole run: the recording ``bluezone-gateway calibrate`` fits the radio
model to. It is a measuring device, not a visitor, so it has no place in the truth.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

from gateway import decode, rolling
from gateway.model import Advert, App, Platform
from gateway.rolling import SLOT_S

MIN_OBSERVABLE: Final = 3
"""Delivered adverts inside the zone below which a visit is unobservable (at σ >= 5 dB)."""
DEFAULT_START: Final = 1596870000.0
"""2020-08-08T07:00:00Z, a morning of the thaidn capture (protocol.md §3)."""
PHONE_HEIGHT_M: Final = 0.3
"""Height of a phone in a pocket or hand above the gateway on the desk."""
TAP_DISTANCE_M: Final = 0.1
TAP_S: Final = 3.0
DOOR_Y: Final = -12.0
OFFICE_Y: Final = 12.0
ADV_JITTER_S: Final = 0.01
"""advDelay: 0-10 ms random delay added to every advertising event (Core spec Vol 6 B 4.4.2.2)."""
MAX_ZONE_M: Final = 6.0
"""Lobby waiting spots lie 2-3.5 zone radii away and their path from the door (12 m away) must
keep 2 radii off: beyond about 6 m no such spot exists on this floor plan."""


@dataclass(frozen=True, slots=True)
class Radio:
    """How RSSI relates to distance, and how the air loses adverts."""

    rssi_1m: float = -65.0
    """Mean RSSI of a phone 1 m away (Bluezone Android advertises at TX_POWER_LOW)."""
    path_loss_exponent: float = 2.2
    noise_db: float = 5.0
    """Per-advert Gaussian jitter (σ); phones jitter by 5-10 dB from one advert to the next."""
    fading_db: float = 2.0
    """σ of slow fading (AR(1))."""
    fading_s: float = 3.0
    """Correlation time of slow fading."""
    device_spread_db: float = 2.0
    """Per-phone offset, uniform in ±this: phone models differ."""
    loss: float = 0.2
    """Probability an advert is not received."""
    sensitivity_dbm: float = -100.0

    @property
    def sigma_db(self) -> float:
        """Return the spread of one still phone's RSSI about the model: noise and fading.

        This is what `gateway.calibrate` measures as ``sigma_db``: over a recording of tens of
        seconds the slow fading (``fading_s`` = 3 s) is sampled many times, so it adds to the
        per-advert noise like an independent term.
        """
        return math.hypot(self.noise_db, self.fading_db)

    @staticmethod
    def noise_for(sigma_db: float, fading_db: float) -> float:
        """Return the per-advert noise that, with ``fading_db`` of fading, spreads ``sigma_db``.

        The inverse of `sigma_db`, for replaying a calibration in the simulator.

        Raises:
            ValueError: ``sigma_db`` is not above ``fading_db``.
        """
        if not sigma_db > fading_db:
            msg = f"sigma_db ({sigma_db}) must be above the fading σ ({fading_db} dB)"
            raise ValueError(msg)
        return math.sqrt(sigma_db * sigma_db - fading_db * fading_db)

    def mean_rssi(self, distance_m: float) -> float:
        """Return the model's mean RSSI at ``distance_m``."""
        return self.rssi_1m - 10 * self.path_loss_exponent * math.log10(max(distance_m, 0.05))

    def distance(self, rssi: float) -> float:
        """Return the distance at which the mean RSSI is ``rssi`` (the model's inverse)."""
        return 10 ** ((self.rssi_1m - rssi) / (10 * self.path_loss_exponent))

    def sample(
        self, rng: random.Random, distance_m: float, offset_db: float, fading_db: float
    ) -> int:
        """Return one advert's RSSI at ``distance_m``: the mean, the offsets and the noise."""
        return round(
            self.mean_rssi(distance_m) + offset_db + fading_db + rng.gauss(0, self.noise_db)
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to simulate."""

    people: int = 100
    minutes: float = 30.0
    seed: int = 0
    start: float = DEFAULT_START
    zone_m: float = 3.0
    radio: Radio = field(default_factory=Radio)
    fixed_devices: int = 4
    """Unrelated devices standing in the lobby for the whole run (wearables, beacons)."""
    reference_m: float | None = None
    """A Bluezone Android phone, app open, held this far away for the whole run (calibration)."""
    staff: int = 0
    """People who sit inside the zone for the whole run (the guard, the receptionist): their
    phones rotate ID and address many times while inside (linking, issue 10)."""
    boundary_crowd: int = 0
    """Extra people arriving around each quarter hour (from 60 s before to 30 s after), so
    that crowds pass while phones rotate their IDs."""
    alarm_latency_s: float = 0.1
    """Bound of a Bluezone Android phone's mean alarm latency: each of its alarms (advertising
    start, stop) fires late by an exponential delay whose mean, drawn per phone, lies between
    0 and this. An assumption [I]: the delivery and service-start delay of an exact alarm is
    not measured in protocol.md; 0 gives every phone an exact 30 s (65 s) cycle."""

    @property
    def sure_m(self) -> float:
        """Return the radius inside which even the weakest phone model is heard as inside.

        Phones differ by ``device_spread_db``, so the zone's edge is blurred by that many dB:
        a phone heard only in the band between this radius and ``zone_m`` cannot be told from
        one just outside by RSSI, by any receiver.
        """
        radio = self.radio
        return self.zone_m * 10 ** (-radio.device_spread_db / (10 * radio.path_loss_exponent))

    def __post_init__(self) -> None:
        """Reject scenarios that cannot be simulated."""
        if self.people < 0 or self.minutes <= 0 or self.zone_m <= 0:
            msg = "people must be >= 0, minutes and zone_m > 0"
            raise ValueError(msg)
        if self.staff < 0 or self.boundary_crowd < 0 or self.alarm_latency_s < 0:
            msg = "staff, boundary_crowd and alarm_latency_s must be >= 0"
            raise ValueError(msg)
        if self.zone_m > MAX_ZONE_M:
            msg = (
                f"zone_m = {self.zone_m} is too large for the simulated lobby (at most"
                f" {MAX_ZONE_M} m: the door is 12 m away and people wait 2-3.5 radii off)"
            )
            raise ValueError(msg)
        if self.reference_m is not None and not self.reference_m > 0:
            msg = f"reference_m must be > 0, got {self.reference_m}"
            raise ValueError(msg)


@dataclass(slots=True)
class TruthVisit:
    """One visit of one device key to the zone."""

    person: str
    kind: str
    app: App
    platform: Platform | None
    key: str
    start: float
    end: float
    adverts: int = 0
    """Adverts of this key delivered while the phone was surely inside (`Scenario.sure_m`)."""

    @property
    def observable(self) -> bool:
        """Whether enough adverts were delivered for any receiver to notice the visit."""
        return self.adverts >= MIN_OBSERVABLE

    def as_dict(self) -> dict[str, Any]:
        """Return the truth-file record."""
        return {
            "type": "visit",
            "person": self.person,
            "kind": self.kind,
            "app": self.app.value,
            "platform": None if self.platform is None else self.platform.value,
            "key": self.key,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "adverts": self.adverts,
            "observable": self.observable,
        }


Payload = tuple[dict[int, bytes], dict[str, bytes], tuple[str, ...], str | None]
"""(manufacturer_data, service_data, service_uuids, name) of an advert."""


@dataclass(frozen=True, slots=True)
class _Window:
    """A stretch of advertising with one address and one payload."""

    start: float
    end: float
    address: str
    key: str | None
    """The device key the gateway should derive (None: not a tracing advert)."""
    interval_s: float
    payload: Payload


Path = list[tuple[float, float, float]]
"""Waypoints (t, x, y); the person moves in straight lines between them."""


def _segment_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Return the distance from the origin (the gateway) to the segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    f = 0.0 if length2 == 0 else max(0.0, min(1.0, -(a[0] * dx + a[1] * dy) / length2))
    return math.hypot(a[0] + f * dx, a[1] + f * dy)


def _address(rng: random.Random) -> str:
    # Random static / resolvable private address: top bits 11 or 01 (Core spec Vol 6 B 1.3).
    first = rng.randrange(64) | rng.choice((0x40, 0xC0))
    return ":".join(f"{b:02X}" for b in [first, *(rng.randrange(256) for _ in range(5))])


_id_cache: dict[tuple[bytes, date], list[bytes]] = {}


def _rolling_id(base: bytes, base_day: date, t: float) -> bytes:
    day, slot = rolling.slot_of(t)
    ids = _id_cache.get((base, day))
    if ids is None:
        if len(_id_cache) > 4096:
            _id_cache.clear()
        ids = _id_cache[base, day] = rolling.day_ids(rolling.daily_key(base, base_day, day))
    return ids[slot]


def _bluezone_android(rid: bytes) -> Payload:
    return {decode.BLUEZONE_COMPANY: rid}, {}, (decode.BLUEZONE_ANDROID_UUID,), None


def _bluezone_ios(foreground: bool, other_app: bool) -> Payload:
    if foreground:
        return {}, {}, (decode.BLUEZONE_IOS_SERVICE,), decode.BLUEZONE_NAME
    mask = bytearray(17)
    mask[0], mask[1] = decode.APPLE_OVERFLOW_TYPE, decode.BLUEZONE_OVERFLOW_MASK
    if other_app:
        mask[16] = 0x80  # another background app's UUID, OR-ed into the same bitmask (§2.3)
    return {decode.APPLE_COMPANY: bytes(mask)}, {}, (), None


class _Phone:
    """A person's phone: which app it runs and its advertising windows over the visit."""

    def __init__(
        self,
        rng: random.Random,
        t0: float,
        t1: float,
        choice: tuple[App | None, Platform | None, str] | None = None,
        alarm_latency_s: float = 0.0,
    ) -> None:
        self.app: App | None
        self.platform: Platform | None
        self.app, self.platform, self.mode = choice or self._choose(rng)
        self.alarm_latency_s = alarm_latency_s
        self.windows = sorted(self._windows(rng, t0, t1), key=lambda w: w.start)

    @staticmethod
    def _choose(rng: random.Random) -> tuple[App | None, Platform | None, str]:
        roll = rng.random()
        if roll < 0.5:
            return App.BLUEZONE, Platform.ANDROID, "full" if rng.random() < 0.2 else "scheduler"
        if roll < 0.7:
            return App.BLUEZONE, Platform.IOS, "foreground" if rng.random() < 0.3 else "background"
        if roll < 0.8:
            return App.GAEN, None, "gaen"
        if roll < 0.85:
            return App.BLUETRACE, Platform.ANDROID, "bluetrace"
        return None, None, "none"

    def _windows(self, rng: random.Random, t0: float, t1: float) -> Iterator[_Window]:
        if self.app is App.BLUEZONE and self.platform is Platform.ANDROID:
            yield from self._bluezone_android(rng, t0, t1)
        elif self.app is App.BLUEZONE:
            fg = self.mode == "foreground"
            payload = _bluezone_ios(fg, other_app=not fg and rng.random() < 0.2)
            for start, address in _rotations(rng, t0, t1, 900.0):
                yield _Window(start, start + 900.0, address, address, 0.2 if fg else 1.0, payload)
        elif self.app is App.GAEN:
            period = rng.uniform(600, 1200)
            for start, address in _rotations(rng, t0, t1, period):
                data = rng.randbytes(decode.GAEN_DATA_LEN)
                key = data[: decode.GAEN_RPI_LEN].hex()
                gaen: Payload = {}, {decode.GAEN_UUID: data}, (decode.GAEN_UUID,), None
                yield _Window(start, start + period, address, key, 0.25, gaen)
        elif self.app is App.BLUETRACE:
            uuid = sorted(decode.BLUETRACE_UUIDS)[0]
            for start, address in _rotations(rng, t0, t1, 185.0):
                chars = bytes(rng.choice(b"0123456789abcdef") for _ in range(3))
                trace: Payload = {decode.BLUETRACE_COMPANY: chars}, {}, (uuid,), None
                yield _Window(start, start + 180.0, address, address, 1.0, trace)
        elif rng.random() < 0.6:  # an iPhone without a tracing app: Nearby Info frames
            for start, address in _rotations(rng, t0, t1, 900.0):
                frame = bytes([0x10, 0x05, *rng.randbytes(5)])
                yield _Window(
                    start,
                    start + 900.0,
                    address,
                    None,
                    0.3,
                    ({decode.APPLE_COMPANY: frame}, {}, (), None),
                )

    def _bluezone_android(self, rng: random.Random, t0: float, t1: float) -> Iterator[_Window]:
        base = rng.randbytes(32)
        base_day = datetime.fromtimestamp(t0, UTC).date()
        on, off = (60.0, 5.0) if self.mode == "full" else (15.0, 15.0)
        companion = rng.random() < 0.5  # Bluezone 3.0.7+ also sends the iBeacon (§1.5)
        # The alarms draw from their own stream: the rest of the run stays as it was.
        alarms = random.Random(base)
        latency = alarms.uniform(0, self.alarm_latency_s)
        start = t0 - rng.uniform(0, on + off)
        n = 0
        while start < t1:
            # The ID is taken when advertising (re)starts, with a new random address each time.
            rid = _rolling_id(base, base_day, start)
            stop = start + on + (alarms.expovariate(1 / latency) if latency else 0.0)
            yield _Window(start, stop, _address(rng), rid.hex(), 0.1, _bluezone_android(rid))
            if companion and (self.mode == "full" or n % 2 == 1):
                beacon = decode.BLUEZONE_IBEACON_PREFIX + b"\xc5"
                yield _Window(
                    start,
                    stop,
                    _address(rng),
                    None,
                    1.0,
                    ({decode.APPLE_COMPANY: beacon}, {}, (), None),
                )
            start = stop + off + (alarms.expovariate(1 / latency) if latency else 0.0)
            n += 1


def _rotations(
    rng: random.Random, t0: float, t1: float, period: float
) -> Iterator[tuple[float, str]]:
    start = t0 - rng.uniform(0, period)
    while start < t1:
        yield start, _address(rng)
        start += period


class _Person:
    """One person: a path across the floor plan and a phone."""

    def __init__(
        self, index: int, sc: Scenario, rng: random.Random, arrival: float | None = None
    ) -> None:
        self.name = f"p{index:05d}"
        self.rng = rng
        self.sc = sc
        self.end = sc.start + sc.minutes * 60
        self.taps: list[tuple[float, float]] = []
        if arrival is not None and math.isnan(arrival):  # staff: inside for the whole run
            self.kind = "staff"
            self.path = self._sit()
        else:
            self.kind = rng.choices(("desk", "pass", "linger"), (0.55, 0.25, 0.20))[0]
            at = sc.start + rng.uniform(0, sc.minutes * 60) if arrival is None else arrival
            self.path, self.taps = self._walk(at)
        self.t_start = self.path[0][0]
        self.t_end = min(self.path[-1][0], self.end)
        self.offset_db = rng.uniform(-sc.radio.device_spread_db, sc.radio.device_spread_db)
        self.phone = _Phone(rng, self.t_start, self.t_end, alarm_latency_s=sc.alarm_latency_s)
        self.visits: list[TruthVisit] = []

    def _walk(self, t0: float) -> tuple[Path, list[tuple[float, float]]]:
        rng = self.rng
        speed = rng.uniform(1.0, 1.4)
        taps: list[tuple[float, float]] = []
        door = (rng.uniform(-2, 2), DOOR_Y)
        office = (rng.uniform(-3, 3), OFFICE_Y)
        if self.kind == "desk":
            angle = rng.uniform(-math.pi * 0.8, -math.pi * 0.2)  # in front of the desk
            r = rng.uniform(0.5, 1.5)
            points = [door, (r * math.cos(angle), r * math.sin(angle)), office]
            stops = [0.0, rng.uniform(10, 90), 0.0]
        elif self.kind == "pass":
            x = rng.choice((-1, 1)) * rng.uniform(0.3, 1.2)
            points, stops = [(x, DOOR_Y), (x, OFFICE_Y)], [0.0, 0.0]
        else:  # waits in the lobby, 2-3.5 zone radii away, then goes back out
            spot = self._lobby_spot(door)
            points, stops = [door, spot, door], [0.0, rng.uniform(120, 600), 0.0]
        if self.kind != "linger" and rng.random() < 0.3:  # leaving the building
            points.reverse()
        path: Path = []
        t = t0
        for i, (x, y) in enumerate(points):
            if i:
                px, py = points[i - 1]
                t += math.hypot(x - px, y - py) / speed
            path.append((t, x, y))
            if stops[i]:
                if self.kind == "desk" and rng.random() < 0.35:
                    tap = t + rng.uniform(1.0, max(1.0, stops[i] - TAP_S - 1.0))
                    taps.append((tap, tap + TAP_S))
                t += stops[i]
                path.append((t, x, y))
        return path, taps

    def _sit(self) -> Path:
        """Seat a member of staff behind the desk, well inside the zone, for the whole run."""
        r = self.rng.uniform(0.8, 0.6 * self.sc.zone_m)
        angle = self.rng.uniform(math.pi * 0.2, math.pi * 0.8)  # behind the desk
        x, y = r * math.cos(angle), r * math.sin(angle)
        # From before the start (the phone's rotation phase is already under way) to after.
        return [(self.sc.start - 60.0, x, y), (self.end + 60.0, x, y)]

    def _lobby_spot(self, door: tuple[float, float]) -> tuple[float, float]:
        """Pick a waiting spot whose whole path from the door keeps 2 zone radii away."""
        rng, zone = self.rng, self.sc.zone_m
        while True:
            r = rng.uniform(2 * zone, 3.5 * zone)
            angle = rng.uniform(-math.pi, 0)
            spot = (r * math.cos(angle), r * math.sin(angle))
            if _segment_distance(door, spot) >= 2 * zone:
                return spot

    def distance(self, t: float, seg: list[int]) -> float:
        """Return the phone's distance from the gateway at ``t`` (``seg`` caches the segment)."""
        for start, stop in self.taps:
            if start <= t < stop:
                return TAP_DISTANCE_M
        path = self.path
        i = seg[0]
        while i < len(path) - 2 and path[i + 1][0] <= t:
            i += 1
        seg[0] = i
        t0, x0, y0 = path[i]
        t1, x1, y1 = path[i + 1]
        f = 0.0 if t1 <= t0 else min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        x = x0 + (x1 - x0) * f
        y = y0 + (y1 - y0) * f
        return math.sqrt(x * x + y * y + PHONE_HEIGHT_M * PHONE_HEIGHT_M)

    def zone_intervals(self) -> list[tuple[float, float]]:
        """Return when the phone was within the zone, solved exactly per straight segment."""
        r2 = self.sc.zone_m**2 - PHONE_HEIGHT_M**2
        out: list[tuple[float, float]] = []
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(self.path):
            if t1 <= t0:
                continue
            # |p0 + (p1 - p0) f|^2 <= r2 for f in [0, 1] is a quadratic in f.
            dx, dy = x1 - x0, y1 - y0
            a = dx * dx + dy * dy
            b = 2 * (x0 * dx + y0 * dy)
            c = x0 * x0 + y0 * y0 - r2
            if a == 0:
                lo, hi = (0.0, 1.0) if c <= 0 else (1.0, 0.0)
            else:
                disc = b * b - 4 * a * c
                if disc < 0:
                    continue
                root = math.sqrt(disc)
                lo, hi = max(0.0, (-b - root) / (2 * a)), min(1.0, (-b + root) / (2 * a))
            if lo < hi:
                start, stop = t0 + lo * (t1 - t0), t0 + hi * (t1 - t0)
                if out and start - out[-1][1] < 1e-6:
                    out[-1] = (out[-1][0], stop)
                else:
                    out.append((start, stop))
        return [(a, min(b, self.end)) for a, b in out if a < self.end]

    def truth(self) -> dict[str, list[TruthVisit]]:
        """Cut the zone intervals by device key: one truth visit per key and stretch."""
        by_key: dict[str, list[TruthVisit]] = {}
        app, platform = self.phone.app, self.phone.platform
        if app is None:
            return by_key
        # A key holds from the start of its first window to the start of the next key's.
        spans: list[tuple[float, float, str]] = []
        for w in self.phone.windows:
            if w.key is None:
                continue
            if spans and spans[-1][2] == w.key:
                spans[-1] = (spans[-1][0], w.end, w.key)
            else:
                if spans:
                    spans[-1] = (spans[-1][0], w.start, spans[-1][2])
                spans.append((w.start, w.end, w.key))
        if spans:
            spans[-1] = (spans[-1][0], math.inf, spans[-1][2])
        for z0, z1 in self.zone_intervals():
            for k0, k1, key in spans:
                lo, hi = max(z0, k0), min(z1, k1)
                if lo < hi:
                    visit = TruthVisit(self.name, self.kind, app, platform, key, lo, hi)
                    by_key.setdefault(key, []).append(visit)
                    self.visits.append(visit)
        return by_key

    def adverts(self) -> Iterator[Advert]:
        """Yield the adverts the gateway receives from this phone, in time order."""
        radio = self.sc.radio
        rng = self.rng
        truth = self.truth()
        out: list[Advert] = []
        seg = [0]
        sure = self.sc.sure_m
        for w in self.phone.windows:
            seg[0] = 0
            t = max(w.start, self.t_start) + rng.uniform(0, w.interval_s)
            fading = rng.gauss(0, radio.fading_db)
            last = t
            stop = min(w.end, self.t_end)
            mfr, sdata, uuids, name = w.payload
            while t < stop:
                a = math.exp(-(t - last) / radio.fading_s)
                fading = a * fading + math.sqrt(1 - a * a) * rng.gauss(0, radio.fading_db)
                last = t
                d = self.distance(t, seg)
                rssi = radio.sample(rng, d, self.offset_db, fading)
                if rssi >= radio.sensitivity_dbm and rng.random() >= radio.loss:
                    out.append(Advert(t, w.address, min(rssi, 0), None, name, uuids, sdata, mfr))
                    if w.key is not None and d <= sure:
                        for visit in truth.get(w.key, ()):
                            if visit.start <= t <= visit.end:
                                visit.adverts += 1
                t += w.interval_s + rng.uniform(0, ADV_JITTER_S)
        out.sort(key=lambda a: a.t)
        yield from out


def _fixed_device(index: int, sc: Scenario, rng: random.Random) -> Iterator[Advert]:
    """Yield the adverts of an unrelated device standing in the lobby for the whole run."""
    distance = rng.uniform(3, 12)
    address = _address(rng)
    name, uuids = rng.choice(
        (
            (f"Mi Smart Band {index}", ("0000fee0-0000-1000-8000-00805f9b34fb",)),
            (None, ("0000feaa-0000-1000-8000-00805f9b34fb",)),  # an Eddystone beacon
            (f"LE-Speaker-{index}", ()),
        )
    )
    interval = rng.uniform(0.5, 2.0)
    end = sc.start + sc.minutes * 60
    t = sc.start + rng.uniform(0, interval)
    mean = sc.radio.mean_rssi(distance)
    while t < end:
        rssi = round(mean + rng.gauss(0, sc.radio.noise_db))
        if rssi >= sc.radio.sensitivity_dbm and rng.random() >= sc.radio.loss:
            yield Advert(t, address, min(rssi, 0), None, name, uuids)
        t += interval


def _reference_phone(sc: Scenario, distance_m: float, rng: random.Random) -> Iterator[Advert]:
    """Yield the adverts of a Bluezone Android phone, app open, held still ``distance_m`` away.

    The phone of `Radio` itself (no per-phone offset): the one a calibration is made with. It
    is the same phone in every run (the same rolling IDs), as it is for an operator.
    """
    radio = sc.radio
    end = sc.start + sc.minutes * 60
    choice = (App.BLUEZONE, Platform.ANDROID, "full")  # the app in front: 60 s on, 5 s off
    phone = _Phone(random.Random("reference phone"), sc.start, end, choice)
    out: list[Advert] = []
    for w in phone.windows:
        if w.key is None:
            continue  # the companion iBeacon: not what a calibration measures
        t = max(w.start, sc.start) + rng.uniform(0, w.interval_s)
        fading = rng.gauss(0, radio.fading_db)
        last = t
        mfr, sdata, uuids, name = w.payload
        while t < min(w.end, end):
            a = math.exp(-(t - last) / radio.fading_s)
            fading = a * fading + math.sqrt(1 - a * a) * rng.gauss(0, radio.fading_db)
            last = t
            rssi = radio.sample(rng, distance_m, 0.0, fading)
            if rssi >= radio.sensitivity_dbm and rng.random() >= radio.loss:
                out.append(Advert(t, w.address, min(rssi, 0), None, name, uuids, sdata, mfr))
            t += w.interval_s + rng.uniform(0, ADV_JITTER_S)
    out.sort(key=lambda a: a.t)
    yield from out


class Simulation:
    """A simulated entrance: `adverts` streams the capture, `truth` lists the visits after it."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        arrivals: list[float | None] = [None] * scenario.people
        arrivals += [math.nan] * scenario.staff
        crowd_rng = random.Random(f"crowd {scenario.seed}")
        first = math.ceil(scenario.start / SLOT_S) * SLOT_S
        end = scenario.start + scenario.minutes * 60
        for boundary in itertools.takewhile(lambda b: b < end, itertools.count(first, SLOT_S)):
            arrivals += [
                boundary + crowd_rng.uniform(-60, 30) for _ in range(scenario.boundary_crowd)
            ]
        self._people = sorted(
            (
                _Person(i, scenario, random.Random(scenario.seed * 1_000_003 + i), arrival)
                for i, arrival in enumerate(arrivals)
            ),
            key=lambda p: p.t_start,
        )

    def adverts(self) -> Iterator[Advert]:
        """Yield every received advert of the run in time order, lazily.

        People join the merge only when their first advert is due, so memory follows the
        number of people in view, not the length of the run.
        """
        sc = self.scenario
        heap: list[tuple[float, int, Advert, Iterator[Advert]]] = []
        counter = itertools.count()
        for i in range(sc.fixed_devices):
            self._push(heap, counter, _fixed_device(i, sc, random.Random(-sc.seed - i - 1)))
        if sc.reference_m is not None:
            # Seeded by the distance too: recordings at two distances do not share their noise.
            rng = random.Random(f"reference {sc.seed} {sc.reference_m}")
            self._push(heap, counter, _reference_phone(sc, sc.reference_m, rng))
        people = iter(self._people)
        waiting = next(people, None)
        while heap or waiting is not None:
            while waiting is not None and (not heap or waiting.t_start <= heap[0][0]):
                self._push(heap, counter, waiting.adverts())
                waiting = next(people, None)
            if not heap:
                continue
            _, _, advert, stream = heapq.heappop(heap)
            yield advert
            self._push(heap, counter, stream)

    @staticmethod
    def _push(
        heap: list[tuple[float, int, Advert, Iterator[Advert]]],
        counter: Iterator[int],
        stream: Iterator[Advert],
    ) -> None:
        advert = next(stream, None)
        if advert is not None:
            heapq.heappush(heap, (advert.t, next(counter), advert, stream))

    def truth(self) -> list[TruthVisit]:
        """Return every visit, in start order; complete once `adverts` has been consumed."""
        return sorted((v for p in self._people for v in p.visits), key=lambda v: v.start)
