"""`ray job submit --working-dir . -- python jobs/baseline.py ...`: same arguments as `pipeline baseline`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir, when not installed

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["baseline", *sys.argv[1:]]))
