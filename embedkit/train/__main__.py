"""``python -m embedkit.train`` (and ``torchrun --nproc_per_node N -m embedkit.train``)."""

import sys

from .trainer import main

sys.exit(main())
