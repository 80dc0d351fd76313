"""Helpers shared by the command-line entry points."""

import os
import sys


def add_config_root_to_path(argv) -> None:
    """Lets ``configs/x.py`` import ``configs.default`` when run from anywhere: puts the parent of the
    config file's package directory on sys.path."""
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            directory = os.path.dirname(os.path.abspath(path.split(":", 1)[0]))
            if os.path.exists(os.path.join(directory, "__init__.py")):
                root = os.path.dirname(directory)
                if root not in sys.path:
                    sys.path.insert(0, root)
