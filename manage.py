#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
    from django.core.management import execute_from_command_line

    from audit.trail import via_command

    # What a command changes (a key, a limit, a price) is stamped as made by it.
    with via_command(sys.argv[1] if len(sys.argv) > 1 else "help"):
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
