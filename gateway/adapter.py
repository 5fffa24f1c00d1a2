"""Adapter care with bluezero: find an adapter by name or MAC, prepare it, power-cycle it.

bluezero talks to BlueZ through dbus-python, whose calls block; `AdapterCare` runs every one
of them on its own single worker thread so that the event loop (and bleak) never waits on
them. Importing bluezero makes GLib's main loop dbus-python's default and ``dbus.SystemBus()``
a process-wide connection to ``$DBUS_SYSTEM_BUS_ADDRESS``; nothing here needs that loop to run.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from gateway.model import GatewayError

_LOGGER = logging.getLogger(__name__)

BLUEZ: Final = "org.bluez"
ADAPTER_IFACE: Final = "org.bluez.Adapter1"
MONITOR_MANAGER_IFACE: Final = "org.bluez.AdvertisementMonitorManager1"
"""Present on an adapter when BlueZ can scan passively (>= 5.56 with --experimental)."""
POWER_SETTLE_S: Final = 1.0
"""Pause between powering off and on: BlueZ needs the HCI reset to finish."""

T = TypeVar("T")


class AdapterError(GatewayError):
    """An adapter is missing or refuses what we ask of it."""


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """What we know of one adapter."""

    name: str
    """Its current name (``hci0``); it can change when the adapter is re-plugged."""
    address: str
    """Its MAC address: the stable way to find it again."""
    powered: bool
    discovering: bool
    passive_capable: bool
    """Whether BlueZ offers the advertisement monitor (passive scanning) on it."""


class AdapterCare:
    """bluezero calls for the scanner, each run on one dedicated thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bluezero")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def find(self, ident: str) -> AdapterInfo:
        """Return the adapter named ``ident`` (``hci0``) or with MAC ``ident``.

        Raises:
            AdapterError: no such adapter (or no BlueZ on the bus).
        """
        info: AdapterInfo = await self._call(_find, ident)
        return info

    async def state(self, known: AdapterInfo) -> AdapterInfo | None:
        """Return the adapter ``known`` as it is now, or None when it is gone (or renamed).

        One Properties.GetAll on the adapter: cheap enough to ask every second, unlike
        GetManagedObjects, which also lists every device BlueZ has seen.
        """
        state: AdapterInfo | None = await self._call(_state, known)
        return state

    async def prepare(self, address: str, alias: str) -> None:
        """Power the adapter on, make it neither discoverable nor pairable, name it ``alias``.

        A gateway is a listener: nobody should pair with it or find it in a phone's list of
        devices; the alias tells IT staff which gateway an adapter belongs to.
        """
        await self._call(_prepare, address, alias)

    async def power_cycle(self, address: str) -> None:
        """Power the adapter off and on again (BlueZ resets the controller on the way)."""
        await self._call(_set_powered, address, False)
        await asyncio.sleep(POWER_SETTLE_S)
        await self._call(_set_powered, address, True)

    def close(self) -> None:
        """Stop the worker thread (pending calls finish first)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# What follows runs on the worker thread only.


def _dbus() -> Any:
    """Return the dbus-python module, bluezero imported first.

    bluezero's import makes GLib's main loop dbus-python's default; ``dbus.SystemBus()`` is a
    process-wide singleton that must be created after that, or bluezero's own calls fail with
    "must be attached to a main loop" (ble-testing.md, pitfall 8).
    """
    try:
        import bluezero.adapter  # noqa: F401 - for its side effect, on this thread
        import dbus
    except ImportError as e:
        msg = (
            f"adapter care needs bluezero ({e.name} is missing): "
            "pip install 'bluezone-gateway[pi]' (see README, Installing on a Pi)"
        )
        raise AdapterError(msg) from None

    return dbus


def _message(error: Exception) -> str:
    """Return a D-Bus error's own message (dbus-python's str() repeats the error name)."""
    get = getattr(error, "get_dbus_message", None)
    return str(get() if get else error)


def _dbus_error() -> type[Exception]:
    return _dbus().exceptions.DBusException  # type: ignore[no-any-return]


def _adapters() -> dict[str, dict[str, Any]]:
    """Return object path → interfaces of every adapter BlueZ exports."""
    _dbus()
    from bluezero import dbus_tools  # see _dbus

    try:
        objects = dbus_tools.get_managed_objects()
    except _dbus_error() as e:
        msg = f"cannot reach BlueZ on the system bus: {_message(e)}"
        raise AdapterError(msg) from None
    return {path: ifaces for path, ifaces in objects.items() if ADAPTER_IFACE in ifaces}


def _find(ident: str) -> AdapterInfo:
    adapters = _adapters()
    for path, ifaces in adapters.items():
        props = ifaces[ADAPTER_IFACE]
        name = str(path).rsplit("/", 1)[-1]
        address = str(props.get("Address", ""))
        if ident in (name, address) or ident.upper() == address.upper():
            return AdapterInfo(
                name=name,
                address=address,
                powered=bool(props.get("Powered", False)),
                discovering=bool(props.get("Discovering", False)),
                passive_capable=MONITOR_MANAGER_IFACE in ifaces,
            )
    known = ", ".join(str(p).rsplit("/", 1)[-1] for p in adapters) or "none"
    msg = f"no Bluetooth adapter {ident} (adapters now: {known})"
    raise AdapterError(msg)


def _state(known: AdapterInfo) -> AdapterInfo | None:
    dbus = _dbus()
    try:
        obj = dbus.SystemBus().get_object(BLUEZ, f"/org/bluez/{known.name}")
        props = dbus.Interface(obj, dbus.PROPERTIES_IFACE).GetAll(ADAPTER_IFACE)
    except dbus.exceptions.DBusException:
        return None  # UnknownObject / UnknownInterface: the adapter went away
    if str(props.get("Address", "")).upper() != known.address.upper():
        return None  # another adapter took the name
    return AdapterInfo(
        known.name,
        known.address,
        bool(props.get("Powered", False)),
        bool(props.get("Discovering", False)),
        known.passive_capable,
    )


def _adapter(address: str) -> Any:
    _dbus()
    from bluezero import adapter  # see _dbus

    _find(address)  # bluezero fails with a TypeError on a missing adapter: say it clearly
    try:
        return adapter.Adapter(address)
    except (adapter.AdapterError, _dbus_error(), ValueError, TypeError) as e:
        msg = f"cannot open adapter {address}: {e}"
        raise AdapterError(msg) from None


def _prepare(address: str, alias: str) -> None:
    dongle = _adapter(address)
    try:
        dongle.powered = True
        dongle.discoverable = False
        dongle.pairable = False
        dongle.alias = alias
    except _dbus_error() as e:
        msg = f"cannot set up adapter {address}: {_message(e)}"
        raise AdapterError(msg) from None


def _set_powered(address: str, on: bool) -> None:
    dongle = _adapter(address)
    try:
        dongle.powered = on
    except _dbus_error() as e:
        msg = f"cannot power adapter {address} {'on' if on else 'off'}: {_message(e)}"
        raise AdapterError(msg) from None
