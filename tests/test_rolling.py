"""Rolling IDs against every test vector of protocol.md §10.1."""

from datetime import date

import pytest

from gateway import rolling

THAIDN = bytes.fromhex("4C5224B397F8AB3896781D5AA0F3119F280513F1B592CA280EBDED6357E21084")
README = bytes.fromhex("66B07D33DA4E16A359B590EDA1E8DC90892D341C86A6491376041FE44505FFB5")
ZEROS = bytes(32)
DAY = date(2020, 8, 8)

VECTORS = [
    (THAIDN, 0, "29ABD013B41C90269332AB5D"),
    (THAIDN, 1, "E26B0FCB3A70A8892B38A074"),
    (THAIDN, 23, "B9A665D754FE65E665D76A45"),
    (THAIDN, 24, "3AA8DFC0A15682B27216FC31"),
    (THAIDN, 95, "B0A3CA441EEC82955E4E6252"),
    (README, 47, "286BCE589AB994EFA5F73CAD"),
    (ZEROS, 0, "490C085D937456A4DD07E710"),
    (ZEROS, 1, "CC4111FEC540C346EC6A053F"),
    (ZEROS, 2, "5E38C5006C2C14915B56F217"),
    (ZEROS, 95, "3140C784CD06058BB930F6A7"),
]


@pytest.mark.parametrize(("key", "slot", "expected"), VECTORS)
def test_day_ids_match_protocol_vectors(key, slot, expected):
    assert rolling.day_ids(key)[slot] == bytes.fromhex(expected)


def test_next_day_keys():
    assert rolling.daily_key(THAIDN, DAY, date(2020, 8, 9)) == bytes.fromhex(
        "4814DD132F8E308694A55AC8319581EA33CADA16B80CDB7FE1191115B76B9224"
    )
    ids = rolling.day_ids(rolling.daily_key(THAIDN, DAY, date(2020, 8, 9)))
    assert ids[0] == bytes.fromhex("64C0D2707C49D2F0D5E3E348")
    assert ids[1] == bytes.fromhex("AC2150D23B417CFA64EB6A42")
    zeros_next = rolling.daily_key(ZEROS, DAY, date(2020, 8, 9))
    assert zeros_next.hex().upper() == (
        "66687AADF862BD776C8FC18B8E9F8E20089714856EE233B3902A591D0D5F2925"
    )
    assert rolling.day_ids(zeros_next)[0] == bytes.fromhex("D80CC204FA6491AF30D0932A")


def test_slot_boundaries_are_utc_quarter_hours():
    midnight = 1596844800  # 2020-08-08 00:00 UTC, the thaidn capture's time_start
    assert rolling.slot_of(midnight) == (DAY, 0)
    assert rolling.slot_of(midnight + 23 * 900 + 899.999) == (DAY, 23)
    assert rolling.slot_of(midnight + 24 * 900) == (DAY, 24)
    assert rolling.slot_of(midnight + 86400 - 0.001) == (DAY, 95)
    assert rolling.slot_of(midnight + 86400) == (date(2020, 8, 9), 0)
    assert rolling.slot_start(DAY, 24).isoformat() == "2020-08-08T06:00:00+00:00"


def test_id_at_follows_the_chain_across_days():
    assert rolling.id_at(THAIDN, DAY, 1596844800 + 23 * 900 + 10).hex().upper() == (
        "B9A665D754FE65E665D76A45"
    )
    assert rolling.id_at(THAIDN, DAY, 1596844800 + 86400 + 900).hex().upper() == (
        "AC2150D23B417CFA64EB6A42"
    )


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        rolling.day_ids(bytes(31))
    with pytest.raises(ValueError, match="only goes forward"):
        rolling.daily_key(ZEROS, DAY, date(2020, 8, 7))
    with pytest.raises(ValueError, match=r"outside 0\.\.95"):
        rolling.slot_start(DAY, 96)


def test_address_ids_hold_until_the_quarter_hour_changes():
    ids = rolling.AddressIds(max_entries=2)
    t = 1596864600.0  # 2020-08-08 05:30 UTC, slot 22
    ids.learn("AA", "b9a665d754fe65e665d76a45", t + 10)
    assert "AA" in ids
    assert ids.get("AA", t + 899) == "b9a665d754fe65e665d76a45"
    assert ids.get("AA", t + 900) is None  # slot 23: the phone broadcasts another ID now
    assert "AA" not in ids
    ids.learn("A", "00" * 12, t)
    ids.learn("B", "11" * 12, t)
    ids.learn("C", "22" * 12, t)
    assert len(ids) == 2
    assert ids.get("A", t) is None  # bounded: the oldest went first
