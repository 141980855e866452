"""Validate NormZoo checkpoints on CIFAR-10/100: `python eval/cifar_val.py --help` (see validate.py)."""

import sys

from validate import main  # this folder is on sys.path when run as python eval/cifar_val.py

if __name__ == "__main__":
    sys.exit(main(dataset="cifar"))
