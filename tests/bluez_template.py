"""python-dbusmock template: a BlueZ for BLE scanning, adapter care and the iPhone GATT read.

Not a test module and not imported by the suite: ``python -m dbusmock`` loads it by path in the
mock process (``tests/fakebluez.py`` starts it)::

    python -m dbusmock --system --template /abs/path/tests/bluez_template.py -l mock.log

It builds on dbusmock's stock ``bluez5`` template (its ``load()``, agent manager, advertising and
monitor managers, and its ``org.bluez.Mock`` helpers ``PairDevice``, ``BlockDevice``,
``ConnectDevice``, ``DisconnectDevice``, ``AddAdvertisement`` and ``AddMonitor`` are re-exported
unchanged) and replaces what gets in the way of bleak and bluezero:

* the stock ``AddDevice`` types ManufacturerData/ServiceData as ``aa{qv}``/``aa{sv}``, which
  breaks bleak's callback; here every Device1 property has BlueZ's real D-Bus type;
* the stock ``StartDiscovery`` raises ``KeyError('DiscoveryFilter')`` without a prior
  ``SetDiscoveryFilter`` (bluezero never calls it) and stores the filter as a bogus Adapter1
  property; here the filter is validated as BlueZ does and kept off the bus;
* the stock ``RemoveAdapter`` leaves the adapter's devices and names only Adapter1 in
  ``InterfacesRemoved``, so bleak keeps the path cached and later fails with UnknownObject.

Methods added on ``org.bluez.Mock`` at ``/``:

``AddAdapter(name s, system_name s) -> s``, ``AddAdapterWithAddress(name s, address s) -> s``
    A powered, idle adapter (``InterfacesAdded`` with every interface). ``AddAdapter`` derives
    the MAC from the name as the stock template does (hci0 → 00:01:02:03:04:05).
``RemoveAdapter(name s)`` (``RemoveAdapterWithDevices`` is the same)
    ``InterfacesRemoved`` for the GATT objects, the devices, then the adapter.
``UpdateAdapter(name s, props a{sv})``
    What a test (rather than a client) changes: any Adapter1 property, with the same side
    effects as ``Properties.Set``.
``AddLEDevice(adapter s, address s, props a{sv}) -> o``
    A newly seen advertiser: Device1 with BlueZ's types, ``InterfacesAdded``.
``Advertise(device o, props a{sv})``
    An advert that changed something: the props are stored and ONE ``PropertiesChanged``
    carries only them.
``AdvertiseRaw(device o, props a{sv})``
    Fault injection: one ``PropertiesChanged`` with the values exactly as received (an RSSI
    string, a list for ManufacturerData…). The stored properties are left alone, so
    ``GetManagedObjects`` stays well-typed for the next client.
``AdvertiseBurst(device o, count u, company q, payload ay, rssi n)``
    ``count`` ``PropertiesChanged`` (ManufacturerData {company: payload}, RSSI) sent in a loop
    inside the mock, without dbusmock's per-signal log line: for throughput tests.
``RemoveLEDevice(device o)``
    The device left BlueZ's cache: ``InterfacesRemoved`` (its GATT objects first).
``AddBluezoneGattId(device o, value ay)``
    The device becomes a Bluezone iPhone: on ``Connect`` it hosts service ``…a667`` with the
    read-only characteristic ``…a689`` whose ``ReadValue`` returns ``value``.
``ResetBlueZ()``
    Back to the state after start-up: no adapters, devices or registrations, empty call logs.

How the objects behave (BlueZ 5.66 as the reference):

* Adapter1 ``Properties.Set`` accepts Powered, Discoverable, Pairable, Alias, DiscoverableTimeout
  and PairableTimeout as BlueZ does, plus Name and Discovering (read-only in BlueZ; writable
  here so tests can force them). Other properties give ``PropertyReadOnly``. A change emits one
  ``PropertiesChanged``; setting a property to its current value emits nothing (BlueZ does not
  either). ``Alias=""`` falls back to Name. ``Powered=false`` also stops discovery
  (``Discovering=false`` in the same signal), sets PowerState "off" and drops connections.
* ``StartDiscovery``/``StopDiscovery``/``SetDiscoveryFilter`` answer ``org.bluez.Error.NotReady``
  on a powered-off adapter. Discovery is one flag per adapter, not BlueZ's per-client sessions.
  ``SetDiscoveryFilter`` rejects unknown keys and RSSI together with Pathloss
  (``InvalidArguments``); the mock applies no filter.
* ``Device1.Connect`` on a device with a Bluezone GATT ID does what bluetoothd does for an LE
  peer: ``Connected=true``, ``InterfacesAdded`` for the GattService1 and GattCharacteristic1,
  ``ServicesResolved=true``, and only then the method reply. Without a GATT ID the device does
  not answer the connection request: ``org.bluez.Error.Failed`` with BlueZ's text for the
  kernel's LE create-connection timeout, ``le-connection-timeout``. The mock answers at once;
  real BlueZ only after the kernel gives up (about 20 s), so bleak's own connect timeout
  (``TimeoutError``) usually fires first on hardware. It is deliberately not
  ``le-connection-abort-by-local``: bleak retries that one.
* ``Disconnect`` (and power-off, and device removal) sets ``ServicesResolved=false``, removes the
  GATT objects (an unbonded device's GATT cache is dropped) and then sets ``Connected=false``.
* ``ReadValue`` also refreshes the characteristic's cached ``Value`` property (with
  ``PropertiesChanged`` when it changed), as BlueZ does.
* Every call is in dbusmock's call log (``org.freedesktop.DBus.Mock.GetMethodCalls``) of the
  object it was made on, including Adapter1 ``Set``.
"""

# SPDX-License-Identifier: LGPL-3.0-or-later (as python-dbusmock, whose bluez5 template it extends)

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

import dbus
import dbus.lowlevel
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5
from dbusmock.templates.bluez5 import (
    AddAdvertisement,
    AddMonitor,
    BlockDevice,
    ConnectDevice,
    DisconnectDevice,
    PairDevice,
)

__all__ = [
    "BUS_NAME",
    "IS_OBJECT_MANAGER",
    "MAIN_OBJ",
    "SYSTEM_BUS",
    "AddAdapter",
    "AddAdapterWithAddress",
    "AddAdvertisement",
    "AddBluezoneGattId",
    "AddDevice",
    "AddLEDevice",
    "AddMonitor",
    "Advertise",
    "AdvertiseBurst",
    "AdvertiseRaw",
    "BlockDevice",
    "ConnectDevice",
    "DisconnectDevice",
    "PairDevice",
    "RemoveAdapter",
    "RemoveAdapterWithDevices",
    "RemoveLEDevice",
    "ResetBlueZ",
    "UpdateAdapter",
    "load",
]

# What dbusmock's loader reads from a template module.
BUS_NAME: Final = bluez5.BUS_NAME
MAIN_OBJ: Final = bluez5.MAIN_OBJ
SYSTEM_BUS: Final = True
IS_OBJECT_MANAGER: Final = True

MOCK_IFACE: Final = "org.bluez.Mock"
ADAPTER_IFACE: Final = "org.bluez.Adapter1"
DEVICE_IFACE: Final = "org.bluez.Device1"
GATT_SERVICE_IFACE: Final = "org.bluez.GattService1"
GATT_CHARACTERISTIC_IFACE: Final = "org.bluez.GattCharacteristic1"
LE_ADVERTISING_MANAGER_IFACE: Final = "org.bluez.LEAdvertisingManager1"
MONITOR_MANAGER_IFACE: Final = "org.bluez.AdvertisementMonitorManager1"
MEDIA_IFACE: Final = "org.bluez.Media1"
NETWORK_SERVER_IFACE: Final = "org.bluez.NetworkServer1"
GATT_MANAGER_IFACE: Final = "org.bluez.GattManager1"

BLUEZONE_SERVICE_UUID: Final = "00004e56-73f5-4bc4-a12f-17d1ad07a667"
"""The 128-bit service a Bluezone iPhone hosts (gateway.decode.BLUEZONE_IOS_SERVICE)."""
BLUEZONE_ID_CHAR_UUID: Final = "00004e56-73f5-4bc4-a12f-17d1ad07a689"
"""Its read-only characteristic: the 12-byte rolling ID (gateway.decode.BLUEZONE_IOS_ID_CHAR)."""
GATT_SERVICE_HANDLE: Final = 0x0010
"""BlueZ names GATT objects after ATT handles: ``dev_…/service0010/char0011``."""

UNREACHABLE_CONNECT_ERROR: Final = "le-connection-timeout"
"""``Connect`` error text for a device that never answers (BlueZ's ETIMEDOUT text)."""

ERROR_FAILED: Final = "org.bluez.Error.Failed"
ERROR_NOT_READY: Final = "org.bluez.Error.NotReady"
ERROR_INVALID_ARGUMENTS: Final = "org.bluez.Error.InvalidArguments"
ERROR_DOES_NOT_EXIST: Final = "org.bluez.Error.DoesNotExist"
ERROR_ALREADY_CONNECTED: Final = "org.bluez.Error.AlreadyConnected"
ERROR_ALREADY_EXISTS: Final = "org.bluez.Error.AlreadyExists"
ERROR_NOT_CONNECTED: Final = "org.bluez.Error.NotConnected"
ERROR_PROPERTY_READ_ONLY: Final = "org.freedesktop.DBus.Error.PropertyReadOnly"
ERROR_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_NO_SUCH_ADAPTER: Final = MOCK_IFACE + ".NoSuchAdapter"
ERROR_NO_SUCH_DEVICE: Final = MOCK_IFACE + ".NoSuchDevice"

WRITABLE_ADAPTER_PROPERTIES: Final = frozenset(
    {
        "Alias",
        "Discoverable",
        "DiscoverableTimeout",
        "Discovering",
        "Name",
        "Pairable",
        "PairableTimeout",
        "Powered",
    }
)
DISCOVERY_FILTER_KEYS: Final = (
    "UUIDs",
    "RSSI",
    "Pathloss",
    "Transport",
    "DuplicateData",
    "Discoverable",
    "Pattern",
)
DEFAULT_SYSTEM_NAME: Final = "fakebluez"

_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_F = TypeVar("_F", bound=Callable[..., Any])


def _mock_method(in_signature: str, out_signature: str = "") -> Callable[[_F], _F]:
    """``dbus.service.method`` on ``org.bluez.Mock``, typed for mypy (dbus-python has no stubs)."""
    decorator = dbus.service.method(
        MOCK_IFACE, in_signature=in_signature, out_signature=out_signature
    )
    return cast(Callable[[_F], _F], decorator)


def _error(name: str, message: str) -> Exception:
    """A D-Bus error reply with BlueZ's error name."""
    return cast(Exception, dbus.exceptions.DBusException(message, name=name))


def load(mock: Any, parameters: dict[str, Any]) -> None:
    """Set up ``/org/bluez`` exactly as the stock template does."""
    bluez5.load(mock, parameters)


# --- D-Bus types ---------------------------------------------------------------------------


def _byte_array(value: Any) -> Any:
    """``ay`` from bytes, a list of ints or a received ``dbus.Array`` of ``dbus.Byte``."""
    return dbus.Array([dbus.Byte(b) for b in bytes(value)], signature="y")


def _string_array(values: Any, *, lower: bool = False) -> Any:
    """``as``; BlueZ reports UUIDs in lower case."""
    return dbus.Array([str(v).lower() if lower else str(v) for v in values], signature="s")


_DEVICE_TYPES: Final[dict[str, Callable[[Any], Any]]] = {
    "Address": lambda v: dbus.String(str(v).upper()),
    "AddressType": dbus.String,
    "Name": dbus.String,
    "Alias": dbus.String,
    "Icon": dbus.String,
    "Modalias": dbus.String,
    "Adapter": dbus.ObjectPath,
    "RSSI": lambda v: dbus.Int16(int(v)),
    "TxPower": lambda v: dbus.Int16(int(v)),
    "Appearance": lambda v: dbus.UInt16(int(v)),
    "Class": lambda v: dbus.UInt32(int(v)),
    "Paired": lambda v: dbus.Boolean(bool(v)),
    "Bonded": lambda v: dbus.Boolean(bool(v)),
    "Trusted": lambda v: dbus.Boolean(bool(v)),
    "Blocked": lambda v: dbus.Boolean(bool(v)),
    "LegacyPairing": lambda v: dbus.Boolean(bool(v)),
    "Connected": lambda v: dbus.Boolean(bool(v)),
    "ServicesResolved": lambda v: dbus.Boolean(bool(v)),
    "WakeAllowed": lambda v: dbus.Boolean(bool(v)),
    "UUIDs": lambda v: _string_array(v, lower=True),
    "ManufacturerData": lambda v: dbus.Dictionary(
        {dbus.UInt16(int(k)): _byte_array(d) for k, d in dict(v).items()}, signature="qv"
    ),
    "ServiceData": lambda v: dbus.Dictionary(
        {dbus.String(str(k).lower()): _byte_array(d) for k, d in dict(v).items()}, signature="sv"
    ),
    "AdvertisingFlags": _byte_array,
    "AdvertisingData": lambda v: dbus.Dictionary(
        {dbus.Byte(int(k)): _byte_array(d) for k, d in dict(v).items()}, signature="yv"
    ),
}

_ADAPTER_TYPES: Final[dict[str, Callable[[Any], Any]]] = {
    "Address": lambda v: dbus.String(str(v).upper()),
    "AddressType": dbus.String,
    "Name": dbus.String,
    "Alias": dbus.String,
    "Modalias": dbus.String,
    "PowerState": dbus.String,
    "Powered": lambda v: dbus.Boolean(bool(v)),
    "Discoverable": lambda v: dbus.Boolean(bool(v)),
    "Pairable": lambda v: dbus.Boolean(bool(v)),
    "Discovering": lambda v: dbus.Boolean(bool(v)),
    "Class": lambda v: dbus.UInt32(int(v)),
    "DiscoverableTimeout": lambda v: dbus.UInt32(int(v)),
    "PairableTimeout": lambda v: dbus.UInt32(int(v)),
    "UUIDs": lambda v: _string_array(v, lower=True),
    "Roles": _string_array,
}


def _coerce(types: Mapping[str, Callable[[Any], Any]], props: Mapping[str, Any]) -> dict[str, Any]:
    """Give each property BlueZ's D-Bus type; unknown names and bad values are InvalidArgs."""
    typed: dict[str, Any] = {}
    for name, value in props.items():
        to_dbus = types.get(str(name))
        if to_dbus is None:
            raise _error(
                ERROR_INVALID_ARGS, f"unknown property {str(name)!r}; known: {sorted(types)}"
            )
        try:
            typed[str(name)] = to_dbus(value)
        except (TypeError, ValueError, OverflowError) as e:
            raise _error(ERROR_INVALID_ARGS, f"bad value for {name}: {value} ({e})") from e
    return typed


def _checked_address(address: str) -> str:
    """An upper-case ``XX:XX:XX:XX:XX:XX``, or InvalidArgs."""
    upper = str(address).upper()
    if not _ADDRESS.match(upper):
        raise _error(ERROR_INVALID_ARGS, f"not a Bluetooth address: {address!r}")
    return upper


# --- signals -------------------------------------------------------------------------------


def _root() -> Any:
    return mockobject.objects[MAIN_OBJ]


def _interfaces_added(path: str) -> None:
    obj = mockobject.objects[path]
    _root().EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(path), dbus.Dictionary(obj.props, signature="sa{sv}")],
    )


def _interfaces_removed(path: str, interfaces: list[str]) -> None:
    _root().EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesRemoved",
        "oas",
        [dbus.ObjectPath(path), dbus.Array(interfaces, signature="s")],
    )


def _properties_changed(obj: Any, interface: str, changed: Mapping[str, Any]) -> None:
    """One PropertiesChanged through dbusmock (so it is in the mock's log)."""
    obj.EmitSignal(
        dbus.PROPERTIES_IFACE,
        "PropertiesChanged",
        "sa{sv}as",
        [interface, dbus.Dictionary(changed, signature="sv"), dbus.Array([], signature="s")],
    )


def _properties_changed_quietly(obj: Any, interface: str, changed: Mapping[str, Any]) -> None:
    """One PropertiesChanged straight onto the bus: no log line, no argument re-marshalling."""
    message = dbus.lowlevel.SignalMessage(obj.path, dbus.PROPERTIES_IFACE, "PropertiesChanged")
    message.append(
        interface,
        dbus.Dictionary(changed, signature="sv"),
        dbus.Array([], signature="s"),
        signature="sa{sv}as",
    )
    for connection, _path, _fallback in obj.locations:
        connection.send_message(message)


def _update(obj: Any, interface: str, changed: Mapping[str, Any]) -> None:
    """Store already-typed properties and announce the ones whose value changed."""
    props = obj.props[interface]
    really = {k: v for k, v in changed.items() if k not in props or props[k] != v}
    if really:
        props.update(really)
        _properties_changed(obj, interface, really)


# --- object tree ---------------------------------------------------------------------------


def _remove_tree(path: str) -> None:
    """Remove an object and everything below it, deepest first, with InterfacesRemoved each."""
    below = [p for p in mockobject.objects if p.startswith(path + "/")]
    for child in sorted(below, key=len, reverse=True):
        _remove_one(child)
    _remove_one(path)


def _remove_one(path: str) -> None:
    obj = mockobject.objects[path]
    interfaces = sorted(obj.props)
    _root().RemoveObject(path)
    _interfaces_removed(path, interfaces)


def _adapter(name: str) -> Any:
    path = f"/org/bluez/{name}"
    obj = mockobject.objects.get(path)
    if obj is None or ADAPTER_IFACE not in obj.props:
        raise _error(ERROR_NO_SUCH_ADAPTER, f"Adapter {name} does not exist.")
    return obj


def _device(path: str) -> Any:
    obj = mockobject.objects.get(str(path))
    if obj is None or DEVICE_IFACE not in obj.props:
        raise _error(ERROR_NO_SUCH_DEVICE, f"Device {path} does not exist.")
    return obj


def _adapters() -> list[str]:
    return sorted(
        path.rsplit("/", 1)[1]
        for path, obj in mockobject.objects.items()
        if ADAPTER_IFACE in obj.props
    )


# --- adapters ------------------------------------------------------------------------------


def _add_adapter(name: str, address: str, system_name: str) -> str:
    path = f"/org/bluez/{name}"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise _error(ERROR_INVALID_ARGS, f"not a valid adapter name: {name!r}")
    if path in mockobject.objects:
        raise _error(ERROR_ALREADY_EXISTS, f"Adapter {name} already exists.")
    props = _coerce(
        _ADAPTER_TYPES,
        {
            "Address": _checked_address(address),
            "AddressType": "public",
            "Name": system_name,
            "Alias": system_name,
            "Class": 0x6C0000,
            "Powered": True,
            "PowerState": "on",
            "Discoverable": False,
            "DiscoverableTimeout": 180,
            "Pairable": False,
            "PairableTimeout": 0,
            "Discovering": False,
            "UUIDs": [
                "00001800-0000-1000-8000-00805f9b34fb",  # Generic Access
                "00001801-0000-1000-8000-00805f9b34fb",  # Generic Attribute
                "0000180a-0000-1000-8000-00805f9b34fb",  # Device Information
            ],
            "Modalias": "usb:v1D6Bp0246d0542",
            "Roles": ["central", "peripheral"],
        },
    )
    root = _root()
    root.AddObject(
        path,
        ADAPTER_IFACE,
        props,
        [
            ("StartDiscovery", "", "", _start_discovery),
            ("StopDiscovery", "", "", _stop_discovery),
            ("SetDiscoveryFilter", "a{sv}", "", _set_discovery_filter),
            ("GetDiscoveryFilters", "", "as", _get_discovery_filters),
            ("RemoveDevice", "o", "", _adapter_remove_device),
        ],
    )
    adapter = mockobject.objects[path]
    # Properties.Set on this object goes through BlueZ's rules (and into the call log).
    adapter.AddMethod(dbus.PROPERTIES_IFACE, "Set", "ssv", "", _set_adapter_property)
    adapter.discovery_filter = {}

    bluez = mockobject.objects["/org/bluez"]
    if bluez.enable_advertise_api:
        adapter.props[LE_ADVERTISING_MANAGER_IFACE] = {
            "ActiveInstances": dbus.Byte(0),
            "SupportedInstances": dbus.Byte(bluez5.MAX_ADVERTISEMENT_INSTANCES),
            "SupportedIncludes": _string_array(["tx-power", "appearance", "local-name"]),
            "SupportedSecondaryChannels": _string_array(["1M", "2M", "Coded"]),
        }
        adapter.AddMethods(
            LE_ADVERTISING_MANAGER_IFACE,
            [
                ("RegisterAdvertisement", "oa{sv}", "", bluez5.RegisterAdvertisement),
                ("UnregisterAdvertisement", "o", "", bluez5.UnregisterAdvertisement),
            ],
        )
        adapter.advertisements = []
    if bluez.enable_monitor_api:
        adapter.props[MONITOR_MANAGER_IFACE] = {
            "SupportedMonitorTypes": _string_array(["or_patterns"]),
            "SupportedFeatures": _string_array([]),
        }
        adapter.AddMethods(
            MONITOR_MANAGER_IFACE,
            [
                ("RegisterMonitor", "o", "", bluez5.RegisterMonitor),
                ("UnregisterMonitor", "o", "", bluez5.UnregisterMonitor),
            ],
        )
        adapter.monitors = []
    for interface, methods in (
        (
            GATT_MANAGER_IFACE,
            [("RegisterApplication", "oa{sv}", "", ""), ("UnregisterApplication", "o", "", "")],
        ),
        (
            MEDIA_IFACE,
            [("RegisterEndpoint", "oa{sv}", "", ""), ("UnregisterEndpoint", "o", "", "")],
        ),
        (NETWORK_SERVER_IFACE, [("Register", "ss", "", ""), ("Unregister", "s", "", "")]),
    ):
        adapter.props[interface] = {}
        adapter.AddMethods(interface, methods)

    _interfaces_added(path)
    return path


def _update_adapter(adapter: Any, changes: Mapping[str, Any]) -> None:
    """Apply typed Adapter1 changes with BlueZ's side effects, as one PropertiesChanged."""
    props = adapter.props[ADAPTER_IFACE]
    changed = dict(changes)
    if changed.get("Alias") == "":
        changed["Alias"] = props["Name"]
    if "Powered" in changed:
        powered = bool(changed["Powered"])
        changed["PowerState"] = dbus.String("on" if powered else "off")
        if not powered:
            changed["Discovering"] = dbus.Boolean(False)
            for path, obj in list(mockobject.objects.items()):
                under = path.startswith(adapter.path + "/")
                if under and DEVICE_IFACE in obj.props and obj.props[DEVICE_IFACE]["Connected"]:
                    _drop_connection(obj)
    _update(adapter, ADAPTER_IFACE, changed)


def _set_adapter_property(adapter: Any, interface: str, name: str, value: Any) -> None:
    """``org.freedesktop.DBus.Properties.Set`` on an adapter."""
    if interface != ADAPTER_IFACE:
        raise _error(ERROR_PROPERTY_READ_ONLY, f"Property '{name}' of {interface} is not writable")
    if name not in adapter.props[ADAPTER_IFACE]:
        raise _error(ERROR_INVALID_ARGS, f"No such property '{name}'")
    if name not in WRITABLE_ADAPTER_PROPERTIES:
        raise _error(ERROR_PROPERTY_READ_ONLY, f"Property '{name}' is not writable")
    _update_adapter(adapter, _coerce(_ADAPTER_TYPES, {name: value}))


def _require_powered(adapter: Any) -> None:
    if not adapter.props[ADAPTER_IFACE]["Powered"]:
        raise _error(ERROR_NOT_READY, "Resource Not Ready")


def _start_discovery(adapter: Any) -> None:
    _require_powered(adapter)
    _update_adapter(adapter, {"Discovering": dbus.Boolean(True)})


def _stop_discovery(adapter: Any) -> None:
    _require_powered(adapter)
    _update_adapter(adapter, {"Discovering": dbus.Boolean(False)})


def _set_discovery_filter(adapter: Any, discovery_filter: Mapping[str, Any]) -> None:
    _require_powered(adapter)
    unknown = sorted(str(k) for k in set(discovery_filter) - set(DISCOVERY_FILTER_KEYS))
    if unknown:
        raise _error(ERROR_INVALID_ARGUMENTS, f"Invalid arguments in method call: {unknown}")
    if "RSSI" in discovery_filter and "Pathloss" in discovery_filter:
        raise _error(ERROR_INVALID_ARGUMENTS, "RSSI and Pathloss are mutually exclusive")
    if discovery_filter.get("Transport", "auto") not in ("auto", "bredr", "le"):
        raise _error(ERROR_INVALID_ARGUMENTS, f"bad Transport {discovery_filter['Transport']!r}")
    adapter.discovery_filter = dict(discovery_filter)


def _get_discovery_filters(_adapter: Any) -> Any:
    return _string_array(DISCOVERY_FILTER_KEYS)


def _adapter_remove_device(adapter: Any, path: str) -> None:
    """Adapter1.RemoveDevice: forget a device (disconnecting it first)."""
    obj = mockobject.objects.get(str(path))
    if obj is None or DEVICE_IFACE not in obj.props or not str(path).startswith(adapter.path + "/"):
        raise _error(ERROR_DOES_NOT_EXIST, "Does Not Exist")
    _remove_device(obj)


def _remove_adapter(name: str) -> None:
    adapter = _adapter(name)
    _remove_tree(adapter.path)


@_mock_method("ss", "s")
def AddAdapter(_self: Any, device_name: str, system_name: str) -> str:  # noqa: N802 - D-Bus name
    """Add a powered adapter whose MAC derives from its name (hci0 → 00:01:02:03:04:05)."""
    n = int(device_name[-1]) if device_name[-1:].isdigit() else 0
    address = ":".join(f"{n + i:02d}" for i in range(6))
    return _add_adapter(str(device_name), address, str(system_name))


@_mock_method("ss", "s")
def AddAdapterWithAddress(_self: Any, device_name: str, address: str) -> str:  # noqa: N802
    """Add a powered adapter with this MAC (e.g. hci1 re-using hci0's after a re-plug)."""
    return _add_adapter(str(device_name), str(address), DEFAULT_SYSTEM_NAME)


@_mock_method("s")
def RemoveAdapter(_self: Any, device_name: str) -> None:  # noqa: N802
    """Remove an adapter with its devices: InterfacesRemoved for each, adapter last."""
    _remove_adapter(str(device_name))


@_mock_method("s")
def RemoveAdapterWithDevices(_self: Any, device_name: str) -> None:  # noqa: N802
    """The stock name for `RemoveAdapter` (which removes the devices as well)."""
    _remove_adapter(str(device_name))


@_mock_method("sa{sv}")
def UpdateAdapter(_self: Any, device_name: str, props: Mapping[str, Any]) -> None:  # noqa: N802
    """Change any Adapter1 property from a test, with the side effects Set has."""
    adapter = _adapter(str(device_name))
    _update_adapter(adapter, _coerce(_ADAPTER_TYPES, props))


# --- devices -------------------------------------------------------------------------------


def _add_le_device(adapter_name: str, address: str, props: Mapping[str, Any]) -> str:
    adapter = _adapter(adapter_name)
    address = _checked_address(address)
    path = f"{adapter.path}/dev_{address.replace(':', '_')}"
    if path in mockobject.objects:
        raise _error(ERROR_ALREADY_EXISTS, f"Device {path} already exists.")
    given = _coerce(_DEVICE_TYPES, props)
    # BlueZ leaves ManufacturerData/ServiceData out while they are empty.
    given = {k: v for k, v in given.items() if k not in ("ManufacturerData", "ServiceData") or v}
    properties = _coerce(
        _DEVICE_TYPES,
        {
            "Address": address,
            "AddressType": "random",
            # With no name, BlueZ's Alias is the address with dashes; bleak maps it to None.
            "Alias": given.get("Name", address.replace(":", "-")),
            "Adapter": adapter.path,
            "Paired": False,
            "Bonded": False,
            "Trusted": False,
            "Blocked": False,
            "LegacyPairing": False,
            "Connected": False,
            "ServicesResolved": False,
            "UUIDs": [],
        },
    )
    properties.update(given)
    _root().AddObject(
        path,
        DEVICE_IFACE,
        properties,
        [
            ("Connect", "", "", _connect),
            ("Disconnect", "", "", _disconnect),
            ("Pair", "", "", _pair),
            ("CancelPairing", "", "", ""),
            ("ConnectProfile", "s", "", ""),
            ("DisconnectProfile", "s", "", ""),
        ],
    )
    device = mockobject.objects[path]
    device.bluezone_gatt_id = None
    _interfaces_added(path)
    return path


def _remove_device(device: Any) -> None:
    if device.props[DEVICE_IFACE]["Connected"]:
        _drop_connection(device)
    _remove_tree(device.path)


def _gatt_paths(device: Any) -> tuple[str, str]:
    service = f"{device.path}/service{GATT_SERVICE_HANDLE:04x}"
    return service, f"{service}/char{GATT_SERVICE_HANDLE + 1:04x}"


def _export_gatt(device: Any) -> None:
    """Export the Bluezone service and ID characteristic, as BlueZ does after discovery."""
    service_path, char_path = _gatt_paths(device)
    root = _root()
    root.AddObject(
        service_path,
        GATT_SERVICE_IFACE,
        {
            "UUID": dbus.String(BLUEZONE_SERVICE_UUID),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(device.path),
            "Includes": dbus.Array([], signature="o"),
        },
        [],
    )
    _interfaces_added(service_path)
    root.AddObject(
        char_path,
        GATT_CHARACTERISTIC_IFACE,
        {
            "UUID": dbus.String(BLUEZONE_ID_CHAR_UUID),
            "Service": dbus.ObjectPath(service_path),
            "Value": dbus.Array([], signature="y"),
            "Flags": _string_array(["read"]),
        },
        [("ReadValue", "a{sv}", "ay", _read_value)],
    )
    characteristic = mockobject.objects[char_path]
    characteristic.device_path = device.path
    _interfaces_added(char_path)


def _drop_connection(device: Any) -> None:
    """What bluetoothd announces when an unbonded LE link goes down."""
    _update(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
    service_path, _char_path = _gatt_paths(device)
    if service_path in mockobject.objects:
        _remove_tree(service_path)
    _update(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})


def _connect(device: Any) -> None:
    """Device1.Connect."""
    props = device.props[DEVICE_IFACE]
    if props["Connected"]:
        raise _error(ERROR_ALREADY_CONNECTED, "Already Connected")
    _require_powered(mockobject.objects[str(props["Adapter"])])
    if device.bluezone_gatt_id is None:
        raise _error(ERROR_FAILED, UNREACHABLE_CONNECT_ERROR)
    _update(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    _export_gatt(device)
    _update(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(True)})


def _disconnect(device: Any) -> None:
    """Device1.Disconnect."""
    if not device.props[DEVICE_IFACE]["Connected"]:
        raise _error(ERROR_NOT_CONNECTED, "Not Connected")
    _drop_connection(device)


def _pair(device: Any) -> None:
    """Device1.Pair: just-works pairing that always succeeds."""
    if device.props[DEVICE_IFACE]["Paired"]:
        raise _error(ERROR_ALREADY_EXISTS, "Already Exists")
    _update(device, DEVICE_IFACE, {"Paired": dbus.Boolean(True), "Bonded": dbus.Boolean(True)})


def _read_value(characteristic: Any, options: Mapping[str, Any]) -> Any:
    """GattCharacteristic1.ReadValue: the device's Bluezone ID, from ``offset`` on."""
    device = _device(characteristic.device_path)
    if not device.props[DEVICE_IFACE]["Connected"] or device.bluezone_gatt_id is None:
        raise _error(ERROR_FAILED, "Not connected")
    value = _byte_array(device.bluezone_gatt_id[int(options.get("offset", 0)) :])
    _update(characteristic, GATT_CHARACTERISTIC_IFACE, {"Value": value})
    return value


@_mock_method("ssa{sv}", "o")
def AddLEDevice(  # noqa: N802
    _self: Any, adapter_device_name: str, address: str, props: Mapping[str, Any]
) -> Any:
    """A newly seen LE advertiser: Device1 with BlueZ's types, then InterfacesAdded."""
    return dbus.ObjectPath(_add_le_device(str(adapter_device_name), str(address), props))


@_mock_method("sss", "s")
def AddDevice(_self: Any, adapter_device_name: str, device_address: str, alias: str) -> str:  # noqa: N802
    """The stock signature, but an LE device with correct types (the stock one breaks bleak)."""
    return _add_le_device(str(adapter_device_name), str(device_address), {"Name": alias})


@_mock_method("oa{sv}")
def Advertise(_self: Any, device_path: str, props: Mapping[str, Any]) -> None:  # noqa: N802
    """An advert that changed these properties: store them, ONE PropertiesChanged with them.

    A new Name also changes Alias unless the device has an alias of its own, as in BlueZ.
    """
    device = _device(device_path)
    changed = _coerce(_DEVICE_TYPES, props)
    stored = device.props[DEVICE_IFACE]
    # Without an alias of its own, BlueZ's Alias follows the name (and is announced with it).
    default_aliases = (stored.get("Name"), stored["Address"].replace(":", "-"))
    if "Name" in changed and "Alias" not in changed and stored["Alias"] in default_aliases:
        changed["Alias"] = changed["Name"]
    stored.update(changed)
    _properties_changed(device, DEVICE_IFACE, changed)


@_mock_method("oa{sv}")
def AdvertiseRaw(_self: Any, device_path: str, props: Mapping[str, Any]) -> None:  # noqa: N802
    """One PropertiesChanged with the values as received, types unchecked and not stored."""
    _properties_changed(_device(device_path), DEVICE_IFACE, props)


@_mock_method("ouqayn")
def AdvertiseBurst(  # noqa: N802
    _self: Any, device_path: str, count: int, company: int, payload: Any, rssi: int
) -> None:
    """``count`` adverts (ManufacturerData {company: payload}, RSSI) without a log line each."""
    device = _device(device_path)
    changed = _coerce(_DEVICE_TYPES, {"ManufacturerData": {company: payload}, "RSSI": rssi})
    for _ in range(int(count)):
        _properties_changed_quietly(device, DEVICE_IFACE, changed)
    device.props[DEVICE_IFACE].update(changed)


@_mock_method("o")
def RemoveLEDevice(_self: Any, device_path: str) -> None:  # noqa: N802
    """The device left BlueZ's cache (temporary-device timeout, RemoveDevice, …)."""
    _remove_device(_device(device_path))


@_mock_method("oay")
def AddBluezoneGattId(_self: Any, device_path: str, value: Any) -> None:  # noqa: N802
    """Make the device a Bluezone iPhone whose ID characteristic reads ``value``."""
    _device(device_path).bluezone_gatt_id = bytes(value)


@_mock_method("")
def ResetBlueZ(_self: Any) -> None:  # noqa: N802
    """Remove every adapter, device and registration; empty every call log."""
    for name in _adapters():
        _remove_adapter(name)
    for path in list(mockobject.objects):
        if path not in (MAIN_OBJ, "/org/bluez") and path in mockobject.objects:
            _remove_tree(path)
    bluez = mockobject.objects["/org/bluez"]
    bluez.agent_paths = []
    bluez.capabilities = {}
    bluez.default_agent = None
    for obj in mockobject.objects.values():
        obj.call_log = []
