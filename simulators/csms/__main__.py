"""``python -m simulators.csms [serve options]``: the same as ``chargepoint csms serve``."""

from __future__ import annotations

import sys

from chargepoint.csmscli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
