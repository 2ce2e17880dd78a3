"""PN532 host-interface frames (NXP UM0701-02 §6.2) and the replies the reader uses. Pure: bytes in, values out.

Normal information frame::

    00 00 FF LEN LCS TFI DATA... DCS 00      LEN + LCS = 0, TFI + DATA + DCS = 0 (mod 256)

Extended information frame (payload above 255 bytes): ``00 00 FF FF FF LENM LENL LCS TFI DATA... DCS 00``.
ACK is ``00 00 FF 00 FF 00``, NACK ``00 00 FF FF 00 00``, and the application-level error frame carries
the single payload byte ``7F``. TFI is ``D4`` from the host and ``D5`` from the PN532; a reply's command
code is the request's code + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

START_CODE = b"\x00\xff"
HOST_TO_PN532 = 0xD4
PN532_TO_HOST = 0xD5
ERROR_TFI = 0x7F
ACK = bytes.fromhex("0000ff00ff00")
NACK = bytes.fromhex("0000ffff0000")
# HSU wake-up: 0x55 0x55 then enough zero bytes for the PN532 to leave power-down before the next frame.
WAKEUP = b"\x55\x55" + bytes(14)
# TFI + 264 data bytes: the largest payload the PN532 sends or accepts; longer lengths are treated as noise.
MAX_PAYLOAD = 265


class FrameError(ValueError):
    """A frame or reply that does not follow the PN532 protocol; the message says where and why."""


class Command(IntEnum):
    GET_FIRMWARE_VERSION = 0x02
    SAM_CONFIGURATION = 0x14
    RF_CONFIGURATION = 0x32
    IN_LIST_PASSIVE_TARGET = 0x4A


@dataclass(frozen=True)
class Ack:
    """The PN532 accepted the last command frame (its reply follows)."""


@dataclass(frozen=True)
class Nack:
    """The other side asks for the last frame again."""


@dataclass(frozen=True)
class ErrorFrame:
    """The PN532 found an application-level error (syntax) in the last command."""


@dataclass(frozen=True)
class Information:
    """A well-formed information frame: ``tfi`` and the bytes after it."""

    tfi: int
    data: bytes


@dataclass(frozen=True)
class Garbled:
    """Bytes that looked like a frame but failed a checksum or length check; they were discarded."""

    reason: str


Frame = Ack | Nack | ErrorFrame | Information | Garbled


def checksum(data: bytes) -> int:
    """The byte that makes ``sum(data) + checksum`` a multiple of 256 (used for LCS and DCS)."""
    return -sum(data) & 0xFF


def encode_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` (TFI + data) in a normal frame, or an extended one above 255 bytes."""
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise FrameError(f"frame payload of {len(payload)} bytes: must be 1..{MAX_PAYLOAD}")
    if len(payload) <= 0xFF:
        header = bytes([len(payload), checksum(bytes([len(payload)]))])
    else:
        length = len(payload).to_bytes(2, "big")
        header = b"\xff\xff" + length + bytes([checksum(length)])
    return b"\x00" + START_CODE + header + payload + bytes([checksum(payload), 0x00])


def encode_command(command: int, params: bytes = b"") -> bytes:
    """A host-to-PN532 command frame."""
    return encode_frame(bytes([HOST_TO_PN532, command]) + params)


def encode_reply(command: int, data: bytes = b"") -> bytes:
    """A PN532-to-host reply frame for ``command`` (its code + 1)."""
    return encode_frame(bytes([PN532_TO_HOST, command + 1]) + data)


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into frames.

    Bytes outside frames (wake-up, preamble, postamble, line noise) are skipped. A frame whose length
    checksum fails is reported as :class:`Garbled` and the search restarts after its start code; one
    whose data checksum fails is reported and skipped whole.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def reset(self) -> None:
        """Forget buffered bytes (after a timeout, so a false start code cannot stall the next reply)."""
        self._buffer.clear()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while (frame := self._next_frame()) is not None:
            frames.append(frame)
        return frames

    def _next_frame(self) -> Frame | None:
        buffer = self._buffer
        start = buffer.find(START_CODE)
        if start < 0:
            keep = 1 if buffer.endswith(b"\x00") else 0
            del buffer[: len(buffer) - keep]
            return None
        del buffer[:start]
        if len(buffer) < 4:
            return None
        length, lcs = buffer[2], buffer[3]
        if (length, lcs) == (0x00, 0xFF):
            del buffer[:4]
            return Ack()
        if (length, lcs) == (0xFF, 0x00):
            del buffer[:4]
            return Nack()
        header = 4
        if (length, lcs) == (0xFF, 0xFF):
            if len(buffer) < 7:
                return None
            header = 7
            length = int.from_bytes(buffer[4:6], "big")
            if (buffer[4] + buffer[5] + buffer[6]) & 0xFF:
                del buffer[:2]
                return Garbled(f"extended frame length checksum {buffer[4]:02X} fails for length {length}")
        elif (length + lcs) & 0xFF:
            del buffer[:2]
            return Garbled(f"length checksum {lcs:02X} fails for length {length}")
        if not 1 <= length <= MAX_PAYLOAD:
            del buffer[:2]
            return Garbled(f"frame length {length} outside 1..{MAX_PAYLOAD}")
        end = header + length + 1
        if len(buffer) < end:
            return None
        payload, dcs = bytes(buffer[header : end - 1]), buffer[end - 1]
        del buffer[:end]
        if (sum(payload) + dcs) & 0xFF:
            return Garbled(f"data checksum {dcs:02X} fails for {length} payload bytes")
        if payload == bytes([ERROR_TFI]):
            return ErrorFrame()
        return Information(payload[0], payload[1:])


# -- replies -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirmwareVersion:
    ic: int
    version: int
    revision: int
    support: int

    def __str__(self) -> str:
        return f"PN5{self.ic:02X} v{self.version}.{self.revision}"


@dataclass(frozen=True)
class TypeATarget:
    """One ISO 14443 type A card found by InListPassiveTarget at 106 kbps."""

    number: int
    sens_res: bytes
    sel_res: int
    uid: bytes
    ats: bytes = b""

    @property
    def id_tag(self) -> str:
        """The UID as upper-case hex, the usual OCPP idTag of an RFID card."""
        return self.uid.hex().upper()


UID_LENGTHS = (4, 7, 10)  # ISO 14443-3 single, double and triple size UIDs
ISO14443_4_COMPLIANT = 0x20  # SEL_RES bit: the card answers RATS, so the PN532 appends its ATS


def parse_firmware_version(data: bytes) -> FirmwareVersion:
    """The reply data of GetFirmwareVersion (after the reply code): IC, Ver, Rev, Support."""
    if len(data) != 4:
        raise FrameError(f"GetFirmwareVersion reply: {len(data)} bytes, expected 4")
    return FirmwareVersion(*data)


def parse_in_list_passive_target(data: bytes) -> list[TypeATarget]:
    """The reply data of InListPassiveTarget for 106 kbps type A: NbTg, then per target
    Tg, SENS_RES (2), SEL_RES, NFCIDLength, NFCID1 and, for ISO 14443-4 cards, ATS (its first byte is its length).
    """
    if not data:
        raise FrameError("InListPassiveTarget reply: empty, expected the number of targets")
    count, position, targets = data[0], 1, []
    for index in range(count):
        where = f"InListPassiveTarget reply, target {index + 1}"
        if len(data) < position + 5:
            raise FrameError(f"{where}: cut short after {len(data)} bytes")
        number, sens_res = data[position], data[position + 1 : position + 3]
        sel_res, uid_length = data[position + 3], data[position + 4]
        position += 5
        if uid_length not in UID_LENGTHS:
            raise FrameError(f"{where}: UID length {uid_length}, expected 4, 7 or 10 (ISO 14443)")
        uid = data[position : position + uid_length]
        if len(uid) != uid_length:
            raise FrameError(f"{where}: UID cut short ({len(uid)} of {uid_length} bytes)")
        position += uid_length
        ats = b""
        if sel_res & ISO14443_4_COMPLIANT and position < len(data):
            ats_length = data[position]
            ats = data[position : position + ats_length]
            if ats_length < 1 or len(ats) != ats_length:
                raise FrameError(f"{where}: ATS of length {ats_length} cut short")
            position += ats_length
        targets.append(TypeATarget(number, bytes(sens_res), sel_res, bytes(uid), bytes(ats)))
    if position != len(data):
        raise FrameError(f"InListPassiveTarget reply: {len(data) - position} unexpected bytes after the targets")
    return targets


# -- the commands the reader sends --------------------------------------------------------------------------------


def sam_configuration_normal() -> bytes:
    """SAMConfiguration: normal mode (no SAM), virtual-card timeout 1 s (0x14 times 50 ms), P70_IRQ used."""
    return encode_command(Command.SAM_CONFIGURATION, b"\x01\x14\x01")


def get_firmware_version() -> bytes:
    return encode_command(Command.GET_FIRMWARE_VERSION)


def rf_configuration_max_retries(passive_activation: int = 0x02) -> bytes:
    """RFConfiguration item 5 (MaxRetries): MxRtyATR 0xFF, MxRtyPSL 0x01, and a finite
    MxRtyPassiveActivation so InListPassiveTarget answers "no card" instead of waiting for one forever.
    """
    return encode_command(Command.RF_CONFIGURATION, bytes([0x05, 0xFF, 0x01, passive_activation]))


def in_list_passive_target() -> bytes:
    """InListPassiveTarget: at most one target, 106 kbps type A (ISO 14443 A / MIFARE)."""
    return encode_command(Command.IN_LIST_PASSIVE_TARGET, b"\x01\x00")
