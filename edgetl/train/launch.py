"""Which process of a distributed launch this is, from the launcher's environment alone (no torch import), for the
code that runs before training starts or beside it: the run lock, the console, files written outside the trainer.

``torchrun`` and ``accelerate launch`` (``--multi_gpu``, or several GPUs) set ``RANK``; MPI launchers (``accelerate
launch --cpu --mpirun_hostfile``) their own variable. Not launched: rank 0 of 1.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launch_rank() -> int:
    """This process's global rank in its launch (0 when not launched)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    """True unless this is one of the other processes of a distributed launch: only the main one writes the run's
    files, holds its lock and prints."""
    return launch_rank() == 0
