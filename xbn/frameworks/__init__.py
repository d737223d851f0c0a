"""Every framework xbn knows, declared once (``registry``: id, family, adapter module, pip
extra, distributions, capabilities, conventions, profile tables) and the device dimension of
framework ids, ``ID@DEVICE`` (``devices``). Plain data and package metadata: importing this
imports no framework.
"""

from __future__ import annotations

from .devices import CPU, DeviceError, base_id, device_of, parse
from .registry import (
           FRAMEWORKS,
           Capabilities,
           FrameworkInfo,
           availability,
           available,
           capabilities,
           load_adapter,
           module_path,
           version,
)

__all__ = ["availability", "available", "base_id", "Capabilities", "capabilities", "CPU",
           "device_of", "DeviceError", "FrameworkInfo", "FRAMEWORKS", "load_adapter",
           "module_path", "parse", "version"]
