"""The optional hardware indicator: a green LED and a buzzer for check-ins, a red LED for trouble.

Wiring (hardware/indicator.md has the parts and a diagram). Every output is active-high: the
GPIO drives 3.3 V for "on" and 0 V for "off", and each part's other side goes to ground.

- ``green_pin``: a green LED through a ~330 Ω resistor; lit for ``checkin_s`` after a
  check-in (a Bluezone phone held to the gateway).
- ``buzzer_pin``: an active buzzer (it has its own oscillator, so steady power is a tone),
  switched by an NPN transistor because a GPIO pin should not source its current; it sounds
  for ``beep_s`` on a check-in.
- ``red_pin``: a red LED through a ~330 Ω resistor; lit while `alarm_reason` finds trouble in
  the daemon's health: a scanner that is not scanning, or an event the broker has not
  acknowledged for longer than ``outbox_alarm_s``.

Only the pins that are set are opened. The timing runs in gpiozero's background threads
(``blink`` and ``beep`` with ``n=1``), so every method returns at once and may be called from
the asyncio loop. `open_indicator` is how the daemon gets one: None when no pin is set, and
None with one warning when the machine has no GPIO that gpiozero can use (a laptop, CI, a
unit that hides ``/dev/gpiochip*``); the daemon runs on without it. A pin name that gpiozero
rejects is a `ConfigError`, so a typo stops the daemon at startup instead of going unnoticed.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, Final

from gpiozero import LED, Buzzer, Device, Factory
from gpiozero.exc import (
    BadPinFactory,
    GPIOPinInUse,
    PinError,
    PinInvalidPin,
    PinWarning,
)

from gateway.config import ConfigError, IndicatorSection

_LOGGER = logging.getLogger(__name__)

SCANNING_STATES: Final = frozenset({"starting", "scanning", "simulated"})
"""Scanner states that are not trouble (gateway/scan.py, docs/mqtt.md). Any other state,
``recovering`` today (a stall or an error being worked through the ladder), lights red."""


def alarm_reason(health: Mapping[str, Any], outbox_alarm_s: float) -> str | None:
    """Return why the red LED should be lit, or None when all is well.

    Args:
        health: the daemon's health message (``Daemon.health``, docs/mqtt.md); keys that
            are missing count as fine.
        outbox_alarm_s: how old the oldest unacknowledged event may get.

    Returns:
        The reasons joined with ``"; "``, e.g. ``"scanner hci0 recovering (no advert for
        75 s); oldest unsynced event 1234 s old"``.
    """
    reasons = []
    for scanner in health.get("scanners") or ():
        state = scanner.get("state")
        if state in SCANNING_STATES:
            continue
        reason = f"scanner {scanner.get('adapter')} {state}"
        age_s = scanner.get("last_advert_age_s")
        if age_s is not None:
            reason += f" (no advert for {age_s:.0f} s)"
        reasons.append(reason)
    oldest_s = (health.get("outbox") or {}).get("oldest_unsynced_age_s")
    if oldest_s is not None and oldest_s > outbox_alarm_s:
        reasons.append(f"oldest unsynced event {oldest_s:.0f} s old")
    return "; ".join(reasons) or None


class Indicator:
    """The LEDs and the buzzer of one gateway; pins that are not set are None.

    Args:
        settings: the ``[indicator]`` section.
        pin_factory: a gpiozero pin factory (tests pass ``MockFactory()``); None uses
            gpiozero's default, which raises `gpiozero.exc.BadPinFactory` where there is
            no GPIO (`open_indicator` handles that).

    Raises:
        ConfigError: gpiozero rejects a pin name, or two keys name the same pin.
    """

    def __init__(self, settings: IndicatorSection, pin_factory: Factory | None = None) -> None:
        self.settings = settings
        self.green: Any = None
        self.buzzer: Any = None
        self.red: Any = None
        self.alarm: str | None = None
        """Why the red LED is lit (the reason when it came on), or None while it is off."""
        self._alarm_since = 0.0
        self._closed = False
        try:
            self.green = self._output(LED, "green_pin", pin_factory)
            self.buzzer = self._output(Buzzer, "buzzer_pin", pin_factory)
            self.red = self._output(LED, "red_pin", pin_factory)
        except BaseException:
            self.close()
            raise

    def _output(self, kind: Any, key: str, pin_factory: Factory | None) -> Any:
        pin = getattr(self.settings, key)
        if pin is None:
            return None
        try:
            return kind(pin, active_high=True, initial_value=False, pin_factory=pin_factory)
        except PinInvalidPin as e:
            msg = f"[indicator] {key} {pin!r}: {e}"
        except GPIOPinInUse as e:
            msg = f"[indicator] {key} {pin!r}: {e} (each pin must be a different GPIO)"
        raise ConfigError(msg) from None

    def checkin(self) -> None:
        """Light green for ``checkin_s`` and beep for ``beep_s``; a new check-in restarts both."""
        if self._closed:
            return
        if self.green is not None:
            self.green.blink(on_time=self.settings.checkin_s, off_time=0, n=1)
        if self.buzzer is not None:
            self.buzzer.beep(on_time=self.settings.beep_s, off_time=0, n=1)

    def update(self, health: Mapping[str, Any]) -> None:
        """Switch red on or off from the daemon's health; log when it comes on and goes off."""
        if self._closed or self.red is None:
            return
        reason = alarm_reason(health, self.settings.outbox_alarm_s)
        if reason is not None and self.alarm is None:
            self.red.on()
            self.alarm = reason
            self._alarm_since = time.monotonic()
            _LOGGER.warning("Red indicator on: %s", reason)
        elif reason is None and self.alarm is not None:
            self.red.off()
            _LOGGER.info(
                "Red indicator off after %.0f s (it came on for: %s)",
                time.monotonic() - self._alarm_since,
                self.alarm,
            )
            self.alarm = None

    def close(self) -> None:
        """Switch everything off and release the pins; calling it again does nothing."""
        self._closed = True
        for name in ("green", "buzzer", "red"):
            device = getattr(self, name)
            if device is not None:
                device.off()
                device.close()
                setattr(self, name, None)


def _gpio_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "GPIO on paper, but not usable here".

    gpiozero raises `BadPinFactory` (an ImportError) when its default search finds nothing,
    and ImportError, PinError (no Pi revision) or OSError (no ``/dev/gpiochip*``, no access,
    ``/proc/cpuinfo`` hidden) when ``GPIOZERO_PIN_FACTORY`` names one that cannot load. lgpio
    reports a line held by another process ("GPIO busy") with its own ``lgpio.error``,
    known only once gpiozero has imported lgpio.
    """
    errors: list[type[Exception]] = [BadPinFactory, ImportError, PinError, OSError]
    lgpio_error = getattr(sys.modules.get("lgpio"), "error", None)
    if isinstance(lgpio_error, type) and issubclass(lgpio_error, Exception):
        errors.append(lgpio_error)
    return tuple(errors)


def _no_gpio(why: object) -> None:
    _LOGGER.warning("[indicator] pins set but no GPIO: %s; the indicator is off", why)


def _default_factory() -> Factory | None:
    """Return gpiozero's default pin factory, or None (and one warning) when there is none.

    gpiozero tries lgpio, RPi.GPIO, pigpio and its native factory in turn, warning with
    `PinFactoryFallback` at each failure (and `NativePinFactoryFallback` when it settles for
    native); those warnings become one log line instead of going to stderr one by one.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PinWarning)
        try:
            Device.ensure_pin_factory()
        except _gpio_errors() as e:
            _no_gpio("; ".join([*(str(w.message) for w in caught), str(e)]))
            return None
    if caught:
        notes = "; ".join(str(w.message) for w in caught)
        _LOGGER.warning(
            "[indicator] gpiozero chose %s: %s", type(Device.pin_factory).__name__, notes
        )
    factory: Factory = Device.pin_factory
    return factory


def open_indicator(
    settings: IndicatorSection, *, pin_factory: Factory | None = None
) -> Indicator | None:
    """Return the indicator, or None when no pin is set or no GPIO is usable (one warning).

    Args:
        settings: the ``[indicator]`` section.
        pin_factory: for tests; None uses gpiozero's default (``GPIOZERO_PIN_FACTORY``, else
            the first of lgpio, RPi.GPIO, pigpio and native that loads).

    Raises:
        ConfigError: gpiozero rejects a pin name, or two keys name the same pin.
    """
    if not settings.enabled:
        return None
    if pin_factory is None:
        pin_factory = _default_factory()
        if pin_factory is None:
            return None
    try:
        return Indicator(settings, pin_factory)
    except _gpio_errors() as e:
        _no_gpio(e)
        return None
