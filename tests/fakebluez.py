"""A fake BlueZ for tests: a private system-type D-Bus with python-dbusmock's BlueZ on it.

The code under test talks to it with the real bleak BlueZ backend (or bluezero); the only thing
pointing them at it is ``DBUS_SYSTEM_BUS_ADDRESS`` (`FakeBlueZ.address`). Tests drive the mock
through a *synchronous* control API (dbus-python on its own connection), which is fine from
async tests: the mock never calls back into the test process, and the signals it emits wait in
bleak's socket until the event loop runs again.

Fixtures (import them into a conftest, or ``pytest_plugins = ["tests.fakebluez"]``):

``bluez_bus``
    session scope: one dbus-daemon and one mock for the whole session.
``bluez``
    function scope: the mock reset to no adapters/devices and empty call logs, and
    ``DBUS_SYSTEM_BUS_ADDRESS`` set (monkeypatch) so bleak, dbus-fast and subprocesses started
    with ``os.environ`` use the fake bus. bleak keeps one BlueZ manager per event loop and
    connects it on the loop's first bleak call, so every test (own loop) sees its own bus state.

The mock's behaviour is described in ``tests/bluez_template.py``.

PYTEST_DONT_REWRITE: no assertions here need pytest's rewriting, and a test module's
``pytest_plugins`` naming this module after importing from it would otherwise warn.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from xml.sax.saxutils import escape

import pytest
from bleak.backends.bluezdbus.manager import get_global_bluez_manager
from dbus_fast import Message

# A missing dbus-python is reported by start_bus() with an install hint, not as an ImportError
# while conftest is imported.
with contextlib.suppress(ImportError):
    import dbus
    import dbus.bus

TEMPLATE: Final = Path(__file__).resolve().with_name("bluez_template.py")
BUS_ADDRESS_ENV: Final = "DBUS_SYSTEM_BUS_ADDRESS"
BLUEZ: Final = "org.bluez"
MOCK_IFACE: Final = "org.bluez.Mock"
DBUSMOCK_IFACE: Final = "org.freedesktop.DBus.Mock"
ADAPTER_IFACE: Final = "org.bluez.Adapter1"
DEVICE_IFACE: Final = "org.bluez.Device1"
DEFAULT_ADAPTER_ADDRESS: Final = "00:1A:7D:DA:71:13"
MOCK_COMMAND: Final = (sys.executable, "-m", "dbusmock", "--system")
START_TIMEOUT_S: Final = 10.0
CALL_TIMEOUT_S: Final = 60.0

INSTALL_HINT: Final = (
    "the fake BlueZ needs dbus-daemon (apt-get install dbus-daemon) and python-dbusmock with "
    "dbus-python (pip install python-dbusmock dbus-python; dbus-python compiles against "
    "libdbus-1-dev libglib2.0-dev pkg-config), as in .ci/run"
)

BUS_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <keep_umask/>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <!-- A system-type bus allows 128 pending replies per connection by default; pipelined mock
       calls beyond that fail with org.freedesktop.DBus.Error.LimitsExceeded. -->
  <limit name="max_replies_per_connection">65536</limit>
</busconfig>
"""

_ADAPTER_NAMES: Final = {
    "powered": "Powered",
    "discoverable": "Discoverable",
    "pairable": "Pairable",
    "alias": "Alias",
    "name": "Name",
    "discovering": "Discovering",
    "discoverable_timeout": "DiscoverableTimeout",
    "pairable_timeout": "PairableTimeout",
    "address": "Address",
    "roles": "Roles",
}


class FakeBlueZUnavailableError(RuntimeError):
    """dbus-daemon or python-dbusmock/dbus-python is missing, or the mock did not come up."""


class MockError(RuntimeError):
    """The mock answered a control call with a D-Bus error (``name``: e.g.
    ``org.bluez.Mock.NoSuchAdapter``, ``org.freedesktop.DBus.Error.InvalidArgs``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def _check_dependencies() -> None:
    missing = [
        what
        for what, present in (
            ("dbus-daemon", shutil.which("dbus-daemon") is not None),
            ("python-dbusmock", importlib.util.find_spec("dbusmock") is not None),
            ("dbus-python", importlib.util.find_spec("dbus") is not None),
        )
        if not present
    ]
    if missing:
        raise FakeBlueZUnavailableError(f"{', '.join(missing)} not found: {INSTALL_HINT}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate, wait, kill if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _plain(value: Any) -> Any:
    """dbus-python values as plain Python: bool, int, float, str, bytes, list, dict, tuple."""
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, dbus.ByteArray):
        return bytes(value)
    if isinstance(value, dbus.Array):
        if value.signature == "y":
            return bytes(value)
        return [_plain(v) for v in value]
    if isinstance(value, dbus.Dictionary):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, dbus.Struct):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return value


def _device_props(
    *,
    rssi: int | None = None,
    name: str | None = None,
    uuids: Iterable[str] | None = None,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
    tx_power: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments to Device1 properties with BlueZ's D-Bus types (None: left out)."""
    given: dict[str, Any] = {
        "RSSI": None if rssi is None else dbus.Int16(rssi),
        "Name": None if name is None else dbus.String(name),
        "UUIDs": None if uuids is None else dbus.Array([str(u) for u in uuids], signature="s"),
        "ManufacturerData": None
        if manufacturer_data is None
        else dbus.Dictionary(
            {dbus.UInt16(k): dbus.ByteArray(bytes(v)) for k, v in manufacturer_data.items()},
            signature="qv",
        ),
        "ServiceData": None
        if service_data is None
        else dbus.Dictionary(
            {dbus.String(k): dbus.ByteArray(bytes(v)) for k, v in service_data.items()},
            signature="sv",
        ),
        "TxPower": None if tx_power is None else dbus.Int16(tx_power),
    }
    return {k: v for k, v in given.items() if v is not None}


class FakeBlueZ:
    """A running private system bus with the BlueZ mock, and the API to drive it.

    Use `start_bus` (or the fixtures) to get one. Object paths are BlueZ's:
    ``/org/bluez/hci0``, ``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF``.
    """

    def __init__(
        self,
        address: str,
        tmpdir: Path,
        daemon: subprocess.Popen[str],
        mock: subprocess.Popen[bytes],
    ) -> None:
        self.address = address
        """The bus address, for ``DBUS_SYSTEM_BUS_ADDRESS``."""
        self.tmpdir = tmpdir
        self.mock_log = tmpdir / "dbusmock.log"
        """dbusmock's ``-l`` log: every call and emitted signal (except `burst`'s)."""
        self._daemon = daemon
        self._mock = mock
        self._conn: Any = dbus.bus.BusConnection(address)

    # --- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the mock and the bus (terminate, wait, kill if needed). Idempotent."""
        with contextlib.suppress(Exception):
            self._conn.close()
        _stop_process(self._mock)
        _stop_process(self._daemon)
        if self._daemon.stdout is not None:
            self._daemon.stdout.close()

    def __enter__(self) -> FakeBlueZ:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise `FakeBlueZUnavailableError` (with the mock's output) if a process has died."""
        for what, process in (("dbus-daemon", self._daemon), ("dbusmock", self._mock)):
            if process.poll() is not None:
                raise FakeBlueZUnavailableError(
                    f"{what} exited with {process.returncode}; mock output:\n"
                    f"{_tail(self.tmpdir / 'dbusmock.out')}\nlog:\n{_tail(self.mock_log)}"
                )

    def reset(self) -> None:
        """No adapters, devices or registrations; empty call logs (signals announce removals)."""
        self.check_alive()
        self._call("/", MOCK_IFACE, "ResetBlueZ")

    # --- raw access -------------------------------------------------------------------------

    def _call(self, path: str, interface: str, method: str, signature: str = "", *args: Any) -> Any:
        try:
            return self._conn.call_blocking(
                BLUEZ, path, interface, method, signature, args, timeout=CALL_TIMEOUT_S
            )
        except dbus.exceptions.DBusException as e:
            raise MockError(e.get_dbus_name() or "", e.get_dbus_message() or "") from e

    def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        props = self._call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", interface)
        return {str(k): _plain(v) for k, v in props.items()}

    def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``GetManagedObjects`` as plain Python: path → interface → property → value."""
        objects = self._call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        return {str(path): _plain(interfaces) for path, interfaces in objects.items()}

    # --- adapters ---------------------------------------------------------------------------

    def add_adapter(self, name: str = "hci0", address: str = DEFAULT_ADAPTER_ADDRESS) -> str:
        """Add a powered, idle adapter with this MAC; returns its path (``/org/bluez/hci0``)."""
        return str(self._call("/", MOCK_IFACE, "AddAdapterWithAddress", "ss", name, address))

    def remove_adapter(self, name: str = "hci0") -> None:
        """Unplug it: InterfacesRemoved for its devices' GATT objects, devices, then itself."""
        self._call("/", MOCK_IFACE, "RemoveAdapter", "s", name)

    def set_adapter(self, name: str = "hci0", **props: Any) -> None:
        """Change Adapter1 properties as one PropertiesChanged, with BlueZ's side effects.

        Keywords are snake_case (``powered=False``, ``alias="x"``, ``discoverable=True``) or
        BlueZ's own names (``Powered=False``). ``powered=False`` also stops discovery.
        """
        converted = {_ADAPTER_NAMES.get(k, k): v for k, v in props.items()}
        self._call("/", MOCK_IFACE, "UpdateAdapter", "sa{sv}", name, converted)

    def adapter_props(self, name: str = "hci0") -> dict[str, Any]:
        """The adapter's Adapter1 properties as plain Python (``Powered``: bool, …)."""
        return self._get_all(f"/org/bluez/{name}", ADAPTER_IFACE)

    def adapters(self) -> list[str]:
        """Names of the adapters the mock has (``["hci0"]``)."""
        return sorted(
            path.rsplit("/", 1)[1]
            for path, interfaces in self.managed_objects().items()
            if ADAPTER_IFACE in interfaces
        )

    # --- devices ----------------------------------------------------------------------------

    def add_device(
        self,
        adapter: str,
        address: str,
        *,
        rssi: int,
        name: str | None = None,
        uuids: Iterable[str] = (),
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        tx_power: int | None = None,
    ) -> str:
        """A newly seen advertiser (InterfacesAdded, bleak's first callback); returns its path.

        ``manufacturer_data`` maps the company ID to the bytes after it (bleak's convention);
        ``service_data`` maps 128-bit UUID strings to bytes. Empty ones are left out, as BlueZ
        does.
        """
        props = _device_props(
            rssi=rssi,
            name=name,
            uuids=uuids,
            manufacturer_data=manufacturer_data,
            service_data=service_data,
            tx_power=tx_power,
        )
        return str(self._call("/", MOCK_IFACE, "AddLEDevice", "ssa{sv}", adapter, address, props))

    def advertise(
        self,
        path: str,
        *,
        rssi: int | None = None,
        name: str | None = None,
        uuids: Iterable[str] | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        tx_power: int | None = None,
    ) -> None:
        """An advert that changed the given properties: ONE PropertiesChanged with only them.

        Sent even if nothing changed (an identical repeat is delivered again); real BlueZ
        would stay silent then unless DuplicateData is on (and RSSI moves under 8 dBm are
        never reported).
        """
        props = _device_props(
            rssi=rssi,
            name=name,
            uuids=uuids,
            manufacturer_data=manufacturer_data,
            service_data=service_data,
            tx_power=tx_power,
        )
        if not props:
            raise ValueError("advertise() needs at least one property")
        self._call("/", MOCK_IFACE, "Advertise", "oa{sv}", path, props)

    def advertise_raw(self, path: str, props: Mapping[str, Any]) -> None:
        """One PropertiesChanged with these BlueZ-named values exactly as dbus-python sends them.

        For malformed adverts: ``{"RSSI": "strong"}`` goes out as a string,
        ``{"ManufacturerData": [1, 2]}`` as an ``ai``. Use dbus types (``dbus.Int32`` …) to pick
        a type. The mock's stored properties are not changed.
        """
        self._call("/", MOCK_IFACE, "AdvertiseRaw", "oa{sv}", path, dict(props))

    def burst(self, path: str, count: int, company: int, payload: bytes, rssi: int) -> None:
        """``count`` identical adverts (ManufacturerData {company: payload}, RSSI) sent by a
        loop inside the mock, unlogged: measures the bus and the consumer, not this API."""
        self._call("/", MOCK_IFACE, "AdvertiseBurst", "ouqayn", path, count, company, payload, rssi)

    def remove_device(self, path: str) -> None:
        """The device left BlueZ's cache: InterfacesRemoved (disconnecting it first)."""
        self._call("/", MOCK_IFACE, "RemoveLEDevice", "o", path)

    def device_props(self, path: str) -> dict[str, Any]:
        """The device's stored Device1 properties as plain Python."""
        return self._get_all(path, DEVICE_IFACE)

    def add_gatt_id(self, path: str, value: bytes) -> None:
        """Make the device a Bluezone iPhone: on Connect it serves ``value`` in characteristic
        ``00004e56-73f5-4bc4-a12f-17d1ad07a689`` of service ``…a667``."""
        self._call("/", MOCK_IFACE, "AddBluezoneGattId", "oay", path, dbus.ByteArray(value))

    # --- call log ---------------------------------------------------------------------------

    def method_calls(self, path: str, method: str) -> list[tuple[float, list[Any]]]:
        """Calls made on the mock object at ``path`` (any client), oldest first.

        Each is (Unix time, whole seconds as dbusmock records it; arguments as plain Python),
        e.g. ``method_calls("/org/bluez/hci0", "SetDiscoveryFilter")`` →
        ``[(1717000000.0, [{"Transport": "le", "DuplicateData": True}]), …]``.
        """
        calls = self._call(path, DBUSMOCK_IFACE, "GetMethodCalls", "s", method)
        return [(float(timestamp), [_plain(a) for a in args]) for timestamp, args in calls]

    def clear_calls(self, path: str) -> None:
        """Forget the calls made on the object at ``path``."""
        self._call(path, DBUSMOCK_IFACE, "ClearCalls")


def _wait_for_address(daemon: subprocess.Popen[str], log: Path) -> str:
    assert daemon.stdout is not None
    ready, _, _ = select.select([daemon.stdout], [], [], START_TIMEOUT_S)
    address = daemon.stdout.readline().strip() if ready else ""
    if not address:
        _stop_process(daemon)
        raise FakeBlueZUnavailableError(f"dbus-daemon did not start:\n{_tail(log)}")
    return address


def _wait_for_bluez(conn: Any, mock: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not conn.name_has_owner(BLUEZ):
        if mock.poll() is not None:
            raise FakeBlueZUnavailableError(
                f"dbusmock exited with {mock.returncode}:\n{_tail(output)}\n({INSTALL_HINT})"
            )
        if time.monotonic() > deadline:
            raise FakeBlueZUnavailableError(f"{BLUEZ} did not appear on the bus:\n{_tail(output)}")
        time.sleep(0.02)


def start_bus(tmpdir: Path, template: Path = TEMPLATE) -> FakeBlueZ:
    """Start a private system-type dbus-daemon and the BlueZ mock on it, in ``tmpdir``.

    Returns once ``org.bluez`` is owned. Raises `FakeBlueZUnavailableError` (with an install hint)
    if dbus-daemon, python-dbusmock or dbus-python is missing or either process fails.
    """
    _check_dependencies()
    tmpdir.mkdir(parents=True, exist_ok=True)
    socket = tmpdir / "system_bus_socket"
    # sun_path holds 108 bytes; a deep pytest tmpdir falls back to an abstract socket.
    listen = f"unix:path={socket}" if len(str(socket)) < 100 else "unix:tmpdir=/tmp"
    config = tmpdir / "system-bus.conf"
    config.write_text(BUS_CONFIG.format(listen=escape(listen)))

    daemon_log = tmpdir / "dbus-daemon.log"
    with daemon_log.open("wb") as daemon_err:
        daemon = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=daemon_err,
            text=True,
        )
    address = _wait_for_address(daemon, daemon_log)

    mock_output = tmpdir / "dbusmock.out"
    with mock_output.open("wb") as mock_out:
        mock = subprocess.Popen(
            [*MOCK_COMMAND, "--template", str(template), "-l", str(tmpdir / "dbusmock.log")],
            env={**os.environ, BUS_ADDRESS_ENV: address},
            stdout=mock_out,
            stderr=subprocess.STDOUT,
        )
    try:
        fake = FakeBlueZ(address, tmpdir, daemon, mock)
    except BaseException:
        _stop_process(mock)
        _stop_process(daemon)
        raise
    try:
        _wait_for_bluez(fake._conn, mock, mock_output)
    except BaseException:
        fake.stop()
        raise
    return fake


@pytest.fixture(scope="session")
def bluez_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeBlueZ]:
    """One private system bus with the BlueZ mock for the whole session."""
    fake: FakeBlueZ | None = None
    problem = ""
    try:
        fake = start_bus(tmp_path_factory.mktemp("fakebluez"))
    except FakeBlueZUnavailableError as e:
        problem = str(e)
    if fake is None:
        pytest.fail(problem, pytrace=False)  # a failure, not a skip: CI must have the bus
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def bluez(bluez_bus: FakeBlueZ, monkeypatch: pytest.MonkeyPatch) -> FakeBlueZ:
    """The session's fake BlueZ, reset, with ``DBUS_SYSTEM_BUS_ADDRESS`` pointing at it."""
    problem = ""
    try:
        bluez_bus.reset()
    except FakeBlueZUnavailableError as e:
        problem = str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    monkeypatch.setenv(BUS_ADDRESS_ENV, bluez_bus.address)
    return bluez_bus


async def sync_bleak() -> None:
    """Return once this event loop's bleak BlueZ manager has handled every signal the mock
    sent before the call (adapter added/removed, PropertiesChanged …).

    The control API is synchronous, so bleak only reads the mock's signals when the test next
    awaits; ``BleakScanner.start()`` right after ``add_adapter()`` would still miss the
    adapter. D-Bus keeps one sender's messages in order, so a Ping to the mock on bleak's own
    connection is a barrier. Uses bleak's private ``BlueZManager._bus``.
    """
    manager = await get_global_bluez_manager()
    bus = manager._bus
    assert bus is not None
    await bus.call(
        Message(destination=BLUEZ, path="/", interface="org.freedesktop.DBus.Peer", member="Ping")
    )
