"""What a run prints: the project's own lines and progress, one per phase. Ray's and FAISS's chatter goes to
log files unless asked for (`--verbose`)."""
from __future__ import annotations

import sys


def say(line: str) -> None:
    """One progress line to the driver. Ray Train patches `print` into its logger, which echoes each line
    twice; writing to stdout directly echoes it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
