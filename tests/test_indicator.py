"""Tests of gateway.indicator on gpiozero's mock pins: timing, the red alarm, no-GPIO fallbacks."""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import gpiozero.pins.local
import gpiozero.pins.native
import pytest
from gpiozero import LED, Device
from gpiozero.exc import PinUnknownPi
from gpiozero.pins.mock import MockFactory

from gateway.config import ConfigError, IndicatorSection
from gateway.indicator import Indicator, alarm_reason, open_indicator

GREEN, BUZZER, RED = "GPIO17", "GPIO27", "GPIO22"
PIN_LIBRARIES = ("lgpio", "RPi", "RPi.GPIO", "pigpio")
LOGGER = "gateway.indicator"


@pytest.fixture(autouse=True)
def _clean_gpiozero(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start without a global pin factory or GPIOZERO_PIN_FACTORY; close any a test made."""
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    saved = Device.pin_factory
    Device.pin_factory = None
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()
    Device.pin_factory = saved


@pytest.fixture
def factory() -> Iterator[Any]:
    mock = MockFactory()
    yield mock
    mock.close()
    mock.reset()


@pytest.fixture
def make(factory: Any) -> Iterator[Callable[..., Indicator]]:
    """Build indicators on the mock factory; close them after the test."""
    made: list[Indicator] = []

    def build(**pins: Any) -> Indicator:
        indicator = Indicator(IndicatorSection(**pins), factory)
        made.append(indicator)
        return indicator

    yield build
    for indicator in made:
        indicator.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll until predicate() is true; False after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def states(pin: Any) -> list[bool]:
    return [s.state for s in pin.states]


def health(
    state: str = "scanning", age_s: float | None = 0.2, oldest_s: float | None = None
) -> dict[str, Any]:
    return {
        "scanners": [{"adapter": "hci0", "state": state, "last_advert_age_s": age_s}],
        "outbox": {"depth": 0 if oldest_s is None else 3, "oldest_unsynced_age_s": oldest_s},
    }


def block_pin_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make lgpio, RPi.GPIO and pigpio unimportable, as on a laptop, whatever is installed."""
    for name in PIN_LIBRARIES:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("lgpio", "rpigpio", "pigpio"):
        monkeypatch.delitem(sys.modules, f"gpiozero.pins.{name}", raising=False)


def indicator_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# Check-in: green and the buzzer


def test_checkin_lights_green_and_beeps_then_both_go_off(make, factory):
    indicator = make(green_pin=GREEN, buzzer_pin=BUZZER, checkin_s=0.5, beep_s=0.05)
    green, buzzer = factory.pin(GREEN), factory.pin(BUZZER)
    assert (green.state, buzzer.state) == (False, False)
    indicator.checkin()
    assert wait_for(lambda: green.state and buzzer.state)
    assert wait_for(lambda: not buzzer.state)
    assert green.state, "green outlasts the beep"
    assert wait_for(lambda: not green.state)
    assert states(green) == [False, True, False]
    assert states(buzzer) == [False, True, False]
    assert 0.5 - 0.01 <= green.states[2].timestamp < 0.5 + 2
    assert 0.05 - 0.01 <= buzzer.states[2].timestamp < 0.5


def test_second_checkin_restarts_the_timing(make, factory):
    indicator = make(green_pin=GREEN, buzzer_pin=BUZZER, checkin_s=0.3, beep_s=0.05)
    green, buzzer = factory.pin(GREEN), factory.pin(BUZZER)
    indicator.checkin()
    assert wait_for(lambda: green.state)
    assert wait_for(lambda: not buzzer.state)
    time.sleep(0.15)
    indicator.checkin()
    assert wait_for(lambda: not green.state)
    assert states(green) == [False, True, False], "green stays lit across the second check-in"
    assert green.states[2].timestamp >= 0.15 + 0.3 - 0.01, "its 0.3 s count from the second"
    assert wait_for(lambda: states(buzzer) == [False, True, False, True, False])


def test_checkin_returns_at_once(make, factory):
    indicator = make(green_pin=GREEN, buzzer_pin=BUZZER, checkin_s=5.0, beep_s=5.0)
    started = time.monotonic()
    indicator.checkin()
    indicator.checkin()
    assert time.monotonic() - started < 0.5
    assert wait_for(lambda: factory.pin(GREEN).state and factory.pin(BUZZER).state)
    indicator.close()
    assert (factory.pin(GREEN).state, factory.pin(BUZZER).state) == (False, False)


# The red LED


def test_red_follows_a_stalled_scanner_an_old_outbox_and_recovery(make, factory, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    indicator = make(red_pin=RED, outbox_alarm_s=900)
    red = factory.pin(RED)

    indicator.update(health())
    assert not red.state
    assert indicator.alarm is None

    indicator.update(health("recovering", age_s=75.3))
    assert red.state
    indicator.update(health("recovering", age_s=76.3))
    assert red.state
    [on] = indicator_records(caplog)
    assert on.levelno == logging.WARNING
    assert on.getMessage() == "Red indicator on: scanner hci0 recovering (no advert for 75 s)"

    caplog.clear()
    indicator.update(health())
    indicator.update(health())
    assert not red.state
    assert indicator.alarm is None
    [off] = indicator_records(caplog)
    assert off.levelno == logging.INFO
    assert "Red indicator off" in off.getMessage()

    caplog.clear()
    indicator.update(health(oldest_s=899))
    assert not red.state
    indicator.update(health(oldest_s=1234.4))
    assert red.state
    assert indicator.alarm == "oldest unsynced event 1234 s old"
    [on] = indicator_records(caplog)
    assert on.getMessage() == "Red indicator on: oldest unsynced event 1234 s old"

    indicator.update(health(oldest_s=None))
    assert not red.state
    assert states(red) == [False, True, False, True, False]


# Pins that are set, and only those


def test_unset_pins_create_nothing(make, factory, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    only_red = make(red_pin=RED)
    assert [info.name for info in factory.pins] == [RED]
    assert (only_red.green, only_red.buzzer) == (None, None)
    only_red.checkin()

    only_green = make(green_pin="BOARD13")  # GPIO27
    assert sorted(info.name for info in factory.pins) == sorted([RED, "GPIO27"])
    only_green.update(health("recovering"))
    assert only_green.alarm is None
    assert indicator_records(caplog) == []


def test_no_pin_set_means_no_indicator_and_no_gpio_touched(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert not IndicatorSection().enabled
    assert open_indicator(IndicatorSection()) is None
    assert Device.pin_factory is None, "gpiozero's default factory was not even looked for"
    assert indicator_records(caplog) == []


@pytest.mark.parametrize("key", ["green_pin", "buzzer_pin", "red_pin"])
def test_a_pin_name_gpiozero_rejects_is_a_config_error(factory, key):
    pins: dict[str, Any] = {"green_pin": GREEN, "buzzer_pin": BUZZER, "red_pin": RED, key: "GPIO99"}
    with pytest.raises(ConfigError, match=rf"^\[indicator\] {key} 'GPIO99': .*GPIO99") as raised:
        open_indicator(IndicatorSection(**pins), pin_factory=factory)
    # The pins opened before the bad one are released, even while the traceback (and so the
    # half-built Indicator) is still referenced, as when the daemon logs it.
    for other, pin in pins.items():
        if other != key:
            LED(pin, pin_factory=factory).close()  # no GPIOPinInUse
    assert raised.traceback


def test_a_pin_that_is_not_a_gpio_is_a_config_error(factory):
    with pytest.raises(ConfigError, match=r"red_pin 'BOARD1'"):  # 3V3 power
        Indicator(IndicatorSection(red_pin="BOARD1"), factory)


def test_the_same_pin_twice_is_a_config_error(factory):
    settings = IndicatorSection(green_pin=GREEN, red_pin="BOARD11")  # both GPIO17
    with pytest.raises(ConfigError, match=r"red_pin 'BOARD11': pin GPIO17 is already in use"):
        Indicator(settings, factory)
    LED(GREEN, pin_factory=factory).close()


def test_close_switches_off_releases_the_pins_and_can_be_repeated(make, factory):
    indicator = make(green_pin=GREEN, buzzer_pin=BUZZER, red_pin=RED, checkin_s=5.0)
    indicator.checkin()
    indicator.update(health("recovering"))
    assert wait_for(lambda: factory.pin(GREEN).state)
    indicator.close()
    indicator.close()
    assert [factory.pin(p).state for p in (GREEN, BUZZER, RED)] == [False, False, False]
    indicator.checkin()
    indicator.update(health())
    for pin in (GREEN, BUZZER, RED):
        LED(pin, pin_factory=factory).close()


# No GPIO: one warning, no indicator, the daemon goes on


def test_open_indicator_on_gpiozero_default_factory(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    indicator = open_indicator(IndicatorSection(green_pin=GREEN, checkin_s=5.0))
    assert indicator is not None
    try:
        assert isinstance(Device.pin_factory, MockFactory)
        indicator.checkin()
        assert wait_for(lambda: Device.pin_factory.pin(GREEN).state)
    finally:
        indicator.close()
    assert indicator_records(caplog) == []


def test_open_indicator_when_the_named_factory_does_not_exist(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    assert open_indicator(IndicatorSection(green_pin=GREEN, red_pin=RED)) is None
    [warning] = indicator_records(caplog)
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert message.startswith("[indicator] pins set but no GPIO: ")
    assert "'no-such-factory'" in message
    assert message.endswith("; the indicator is off")


def test_open_indicator_when_no_default_factory_loads(monkeypatch, caplog):
    """gpiozero's own search (lgpio, RPi.GPIO, pigpio, native) fails, as on a laptop or in CI."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    block_pin_libraries(monkeypatch)

    def not_a_pi() -> int:
        raise PinUnknownPi("unable to locate Pi revision in /proc/device-tree or /proc/cpuinfo")

    monkeypatch.setattr(gpiozero.pins.local, "get_pi_revision", not_a_pi)
    assert open_indicator(IndicatorSection(buzzer_pin=BUZZER)) is None
    assert Device.pin_factory is None
    [warning] = indicator_records(caplog)
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    for tried in ("lgpio", "rpigpio", "pigpio", "native"):
        assert f"Falling back from {tried}: " in message
    assert "Unable to load any default pin factory!" in message
    assert message.endswith("; the indicator is off")


def test_a_fallback_factory_is_used_and_named_in_one_warning(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    block_pin_libraries(monkeypatch)
    monkeypatch.setattr(gpiozero.pins.native, "NativeFactory", MockFactory)
    indicator = open_indicator(IndicatorSection(red_pin=RED))
    assert indicator is not None
    try:
        indicator.update(health("recovering"))
        assert Device.pin_factory.pin(RED).state
    finally:
        indicator.close()
    warning, _red_on = indicator_records(caplog)
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert message.startswith("[indicator] gpiozero chose MockFactory: Falling back from lgpio")
    assert "experimental pin factory NativeFactory" in message


def test_a_busy_gpio_line_turns_the_indicator_off(monkeypatch, factory, caplog):
    """lgpio reports a line that another process holds with its own lgpio.error."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    lgpio = types.ModuleType("lgpio")

    class LgpioError(Exception):
        pass

    lgpio.error = LgpioError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lgpio", lgpio)

    def busy(name: str) -> Any:
        raise LgpioError("'GPIO busy'")

    monkeypatch.setattr(factory, "pin", busy)
    assert open_indicator(IndicatorSection(green_pin=GREEN), pin_factory=factory) is None
    [warning] = indicator_records(caplog)
    assert warning.getMessage() == (
        "[indicator] pins set but no GPIO: 'GPIO busy'; the indicator is off"
    )


# alarm_reason


@pytest.mark.parametrize(
    ("health_message", "reason"),
    [
        ({}, None),
        ({"scanners": [], "outbox": {}}, None),
        (health(), None),
        (health("starting", age_s=3.0), None),
        (health("simulated", age_s=400.0), None),
        (health(oldest_s=900.0), None),
        (health(oldest_s=900.4), "oldest unsynced event 900 s old"),
        (health(oldest_s=1234.0), "oldest unsynced event 1234 s old"),
        (health("recovering", age_s=75.3), "scanner hci0 recovering (no advert for 75 s)"),
        (health("stalled", age_s=None), "scanner hci0 stalled"),
        (
            health("recovering", age_s=61.0, oldest_s=5000.0),
            "scanner hci0 recovering (no advert for 61 s); oldest unsynced event 5000 s old",
        ),
        (
            {
                "scanners": [
                    {"adapter": "hci0", "state": "scanning", "last_advert_age_s": 0.1},
                    {"adapter": "DC:A6:32:0B:1E:5F", "state": "failed", "last_advert_age_s": 9},
                ],
                "outbox": {"depth": 0, "oldest_unsynced_age_s": None},
            },
            "scanner DC:A6:32:0B:1E:5F failed (no advert for 9 s)",
        ),
    ],
)
def test_alarm_reason(health_message, reason):
    assert alarm_reason(health_message, outbox_alarm_s=900.0) == reason
