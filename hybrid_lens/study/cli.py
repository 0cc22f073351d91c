"""The old name of `hybrid_lens.study.commands`: importing it gives that module."""

import sys

from . import commands

sys.modules[__name__] = commands
