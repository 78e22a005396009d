"""medlite: lightweight deep learning for skin images and physiological signals."""

__version__ = "0.1.0"
