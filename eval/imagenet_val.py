"""Validate NormZoo checkpoints on ImageNet: `python eval/imagenet_val.py --help` (see validate.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(dataset="imagenet"))
