"""deblur_exp: config-driven CNN deblurring and super-resolution experiments."""

__version__ = "0.1.0"
