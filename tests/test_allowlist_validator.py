"""allowlist_validator: the file format (pure), then the module answering validate_token over the real broker."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, run, running_station, write_wiring
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import to_rfc3339
from modules.allowlist_validator.allowlist import AllowListError, Entry, parse_allowlist

NOW = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)

# -- the file format -------------------------------------------------------------------------------------------

token_text = st.text(st.sampled_from("0123456789ABCDEFabcdef-_xyz"), min_size=1, max_size=36)
entries = st.lists(
    st.builds(Entry, token_text, st.none() | token_text,
              st.none() | st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1), timezones=st.just(UTC))
              .map(lambda d: d.replace(microsecond=0)),
              st.booleans()),
    max_size=8, unique_by=lambda e: e.id_token.casefold(),
)


def as_yaml(items: list[Entry]) -> str:
    if not items:
        return "tokens: []\n"
    lines = ["# accepted tokens", "tokens:"]
    for e in items:
        lines.append(f"  - id_token: '{e.id_token}'")
        if e.parent_id is not None:
            lines.append(f"    parent_id: '{e.parent_id}'")
        if e.expiry is not None:
            lines.append(f"    expiry: {to_rfc3339(e.expiry)}")
        lines.append(f"    blocked: {str(e.blocked).lower()}")
    return "\n".join(lines) + "\n"


def as_csv(items: list[Entry]) -> str:
    rows = ["id_token,parent_id,expiry,blocked", "# comment row"]
    rows += [f"{e.id_token},{e.parent_id or ''},{to_rfc3339(e.expiry) if e.expiry else ''},{'yes' if e.blocked else ''}"
             for e in items]
    return "\n".join(rows) + "\n"


@given(entries)
def test_yaml_and_csv_files_give_the_listed_tokens(items: list[Entry]) -> None:
    for text, fmt in ((as_yaml(items), "yaml"), (as_csv(items), "csv")):
        parsed = parse_allowlist(text, fmt, "tokens")
        got = [(e.id_token, e.parent_id, e.expiry, e.blocked) for e in parsed.entries.values()]
        assert got == [(e.id_token, e.parent_id, e.expiry, e.blocked) for e in items]


@given(entries, st.data())
def test_answers_follow_blocked_and_expiry(items: list[Entry], data: st.DataObject) -> None:
    allowlist = parse_allowlist(as_yaml(items), "yaml", "tokens")
    for e in items:
        answer = allowlist.decide(data.draw(st.sampled_from([e.id_token.lower(), e.id_token.upper()])), NOW)
        expired = e.expiry is not None and e.expiry <= NOW
        assert answer["status"] == ("Blocked" if e.blocked else "Expired" if expired else "Accepted")
        assert answer["parent_id"] == e.parent_id
        assert answer["expiry_time"] == (to_rfc3339(e.expiry) if answer["status"] == "Accepted" and e.expiry
                                         else None)
    listed = {e.id_token.casefold() for e in items}
    if "nope" not in listed:
        assert allowlist.decide("NOPE", NOW)["status"] == "Invalid"
        assert allowlist.decide("NOPE", NOW, "Unknown")["status"] == "Unknown"


def test_plain_tokens_dates_and_numbers_kept_as_written() -> None:
    allowlist = parse_allowlist("tokens:\n  - 00012345\n  - 1E10\n  - {id_token: AB, expiry: 2026-03-14}\n",
                                "yaml", "t.yaml")
    assert set(allowlist.entries) == {"00012345", "1e10", "ab"}
    assert allowlist.decide("ab", NOW)["expiry_time"] == "2026-03-15T00:00:00.000Z"  # valid through that day


@pytest.mark.parametrize(("text", "fmt", "message"), [
    ("", "yaml", "t:.*empty"),
    ("tokens: [\n", "yaml", "t:2: not valid YAML"),
    ("tokens:\n  - {id_token: A1, blokced: true}\n", "yaml", "t:2: unknown field 'blokced' .did you mean 'blocked'"),
    ("tokens:\n  - A1\n  - a1\n", "yaml", "t:3: token 'a1' already listed on line 2"),
    ("tokens:\n  - {id_token: A1, expiry: 2026-01-01T10:00:00}\n", "yaml", "t:2: .*needs a time zone"),
    ("tokens:\n  - {id_token: A1, expiry: soon}\n", "yaml", "t:2: expiry 'soon' is not an RFC 3339"),
    ("tokens:\n  - {id_token: A1, blocked: maybe}\n", "yaml", "t:2: blocked must be true or false"),
    ("tokens:\n  - {id_token: '" + "A" * 37 + "'}\n", "yaml", "t:2: id_token must have 1 to 36"),
    ("tokens:\n  - [A1]\n", "yaml", "t:2: a token is a string or a mapping"),
    ("cards:\n  - A1\n", "yaml", "t:1: unknown key 'cards'"),
    ("- A1\n", "yaml", "t:1: expected a mapping"),
    ("id_token,parent\nA1,P\n", "csv", "t:1: header: unknown field 'parent' .did you mean 'parent_id'"),
    ("parent_id\nP\n", "csv", "t:1: the header row must name the column id_token"),
    ("id_token\nA1\nB2,extra\n", "csv", "t:3: 2 cells, the header names 1"),
    ("id_token,expiry\nA1,2026-02-30\n", "csv", "t:2: expiry '2026-02-30'"),
    ("# only a comment\n", "csv", "t: no header row"),
])
def test_broken_files_name_the_line_and_the_reason(text: str, fmt: str, message: str) -> None:
    with pytest.raises(AllowListError, match=message):
        parse_allowlist(text, fmt, "t")


# -- the module over the real broker ---------------------------------------------------------------------------

LIST_YAML = f"""\
tokens:
  - {{id_token: 04A1B2C3, parent_id: FLEET-7, expiry: {to_rfc3339(datetime.now(UTC) + timedelta(days=30))}}}
  - {{id_token: DEADBEEF, blocked: true}}
  - {{id_token: CAFEBABE, expiry: 2020-01-01T00:00:00Z}}
"""
VALIDATORS = """\
  allow_yaml:
    module: allowlist_validator
    config: {file: tokens.yaml, reload_interval_s: 0.1}
  allow_csv:
    module: allowlist_validator
    config: {file: %s, unlisted_status: Unknown}
"""


async def status(probe: BusProbe, module_id: str, id_token: str) -> dict[str, Any]:
    return await probe.call(module_id, "main", "validate_token", {"id_token": id_token, "token_type": "rfid"})


async def wait_status(probe: BusProbe, module_id: str, id_token: str, expected: str, timeout: float = 5.0) -> None:
    async def reached() -> None:
        while (await status(probe, module_id, id_token))["status"] != expected:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(reached(), timeout)


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` so that the change is visible even within one timestamp tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_validator_answers_from_the_file(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text(LIST_YAML)
    csv_file = tmp_path / "lists" / "tokens.csv"
    csv_file.parent.mkdir()
    csv_file.write_text("id_token,parent_id\n04A1B2C3,CSV-GROUP\n")
    path = write_wiring(tmp_path, broker.port, VALIDATORS % csv_file)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            accepted = await status(probe, "allow_yaml", "04a1b2c3")
            assert accepted["status"] == "Accepted" and accepted["parent_id"] == "FLEET-7"
            assert str(accepted["expiry_time"]).endswith("Z")
            assert (await status(probe, "allow_yaml", "DEADBEEF"))["status"] == "Blocked"
            assert (await status(probe, "allow_yaml", "CAFEBABE"))["status"] == "Expired"
            assert (await status(probe, "allow_yaml", "11111111"))["status"] == "Invalid"
            assert (await status(probe, "allow_csv", "04A1B2C3"))["parent_id"] == "CSV-GROUP"
            assert (await status(probe, "allow_csv", "11111111"))["status"] == "Unknown"

    run(scenario())


def test_reload_on_change_and_broken_file_keeps_the_last_good_list(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.allow_yaml")
    allow_file = tmp_path / "tokens.yaml"
    allow_file.write_text(LIST_YAML)
    (tmp_path / "tokens.csv").write_text("id_token\n")
    path = write_wiring(tmp_path, broker.port, VALIDATORS % "tokens.csv")

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert (await status(probe, "allow_yaml", "DEADBEEF"))["status"] == "Blocked"
            rewrite(allow_file, "tokens:\n  - DEADBEEF\n  - 11111111\n")
            await wait_status(probe, "allow_yaml", "11111111", "Accepted")
            assert (await status(probe, "allow_yaml", "DEADBEEF"))["status"] == "Accepted"
            assert (await status(probe, "allow_yaml", "04A1B2C3"))["status"] == "Invalid"
            rewrite(allow_file, "tokens:\n  - 22222222\n  - {id_token: 11111111, blocked: perhaps}\n")
            await asyncio.sleep(0.5)
            assert (await status(probe, "allow_yaml", "11111111"))["status"] == "Accepted"
            assert (await status(probe, "allow_yaml", "22222222"))["status"] == "Invalid"
            rejected = [r for r in caplog.records if r.getMessage().startswith("allow-list rejected")]
            assert len(rejected) == 1
            assert f"{allow_file}:3: blocked must be true or false" in rejected[0].fields["problem"]  # type: ignore[attr-defined]
            allow_file.unlink()
            await asyncio.sleep(0.3)
            assert (await status(probe, "allow_yaml", "11111111"))["status"] == "Accepted"

    run(scenario())


def test_missing_file_answers_unknown_until_it_appears(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "tokens.csv").write_text("id_token\n")
    path = write_wiring(tmp_path, broker.port, VALIDATORS % "tokens.csv")

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            topic = "cp/allow_yaml/main/error/backend_unavailable"
            probe.watch(topic)
            await probe.wait_for(topic, lambda p: b'"active": true' in p)
            answer = await status(probe, "allow_yaml", "04A1B2C3")
            assert answer["status"] == "Unknown" and "tokens.yaml" in answer["reason"]
            (tmp_path / "tokens.yaml").write_text(LIST_YAML)
            await wait_status(probe, "allow_yaml", "04A1B2C3", "Accepted")
            await probe.wait_for(topic, lambda p: b'"active": false' in p)

    run(scenario())
