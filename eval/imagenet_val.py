"""Validate NormZoo checkpoints on ImageNet: `python eval/imagenet_val.py --help` (see validate.py)."""

import sys

from validate import main  # this folder is on sys.path when run as python eval/imagenet_val.py

if __name__ == "__main__":
    sys.exit(main(dataset="imagenet"))
