"""Emulated PN532 RFID reader on a pseudo-terminal; see ``emulator.py`` and docs/readers.md."""

from .emulator import Pn532Emulator

__all__ = ["Pn532Emulator"]
