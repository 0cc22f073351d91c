"""The old name of `hybrid_lens.study.plan`: importing it gives that module."""

import sys

from . import plan

sys.modules[__name__] = plan
