"""medlite: lightweight deep learning for skin images and physiological signals.

``medlite.load_run(run_dir)`` returns the predictor of a trained run (see
:func:`medlite.inference.load_run`). Importing medlite changes no global state.
"""

__version__ = "0.1.0"


def load_run(run_dir, **options):
    """The :class:`~medlite.inference.Predictor` of a trained run; ``options`` as in
    :func:`medlite.inference.load_run` (device, batch_size, fast, overrides)."""
    from medlite.inference.predictor import load_run as load

    return load(run_dir, **options)
