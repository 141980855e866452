"""NormZoo's trainer: ``python -m train --help``. Recipes in ``train/recipes.py``."""
