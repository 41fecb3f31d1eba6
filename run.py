"""Command line and composition root (SPEC §7). Only this module pairs ports with adapters."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("position tracker: the domain core, stores and PnL cache are ready; the paper session "
          "(actor system and paper broker) is not wired into run.py yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
