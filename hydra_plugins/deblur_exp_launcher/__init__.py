"""deblur_exp's Hydra launcher plugin: ``hydra/launcher=threads`` (see threads_launcher.py)."""
