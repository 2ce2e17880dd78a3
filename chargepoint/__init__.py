"""chargepoint: a charging-station controller built from modules that talk over MQTT."""

__version__ = "0.1.0"

from chargepoint.module import CmdError, Module

__all__ = ["CmdError", "Module", "__version__"]
