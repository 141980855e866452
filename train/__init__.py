"""NormZoo's trainer: ``python -m train --help``. The flags are in ``train/cli.py``, the
recipes in ``train/recipes.py``, the data in ``train/data.py``, the loop in ``train/loop.py``,
the run folder and its resume checks in ``train/run_folder.py`` and the end of a run (test
figure, model.safetensors, Hub folder, registration, curves) in ``train/finish.py``."""
