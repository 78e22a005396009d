"""Synthetic data sets with known ground truth, for demos, tests and benchmarks.

Each generator draws data that look like a task's real data and whose truth is exact, so
that ``medlite demo``, the test suite and the benchmarks run without any download. They
follow scikit-learn's ``make_*`` functions: explicit arguments, a ``seed`` that fixes every
value, and arrays or tables returned, with shapes and units in each docstring. The
``write_*`` functions put the same data on disk in the layout that the matching task reads.
Readers of real data live in :mod:`medlite.data`.

Modules:

- :mod:`medlite.datasets.lesions`: dermoscopy-like images with exact lesion masks
  (segmentation): :func:`make_lesions`, :func:`make_lesion_image`,
  :func:`write_lesion_dataset`.
- :mod:`medlite.datasets.skin`: skin close-ups with systemic-sclerosis-like changes, classes
  :data:`SSC_CLASSES` (classification): :func:`make_skin`, :func:`make_skin_image`,
  :func:`sample_skin_subject`, :func:`write_skin_dataset`.
- :mod:`medlite.datasets.pasi_trial`: a psoriasis treatment trial, PASI sign scores over
  visits and matching photos (One-Step PASI): :func:`make_pasi_trial`,
  :func:`write_pasi_trial`, :func:`render_region_photos`, :func:`pasi_by_visit`,
  :func:`trial_visit_table`.
- :mod:`medlite.datasets.ecg`: ECG with controllable heart rate, variability and
  morphology, and a WESAD-like stress study (stress detection): :func:`make_ecg`,
  :func:`ecg_profile`, :func:`make_ecg_study`, :class:`EcgCondition`.

Only numpy, scipy, pandas and Pillow are needed; importing this package does not import
torch or any task code.
"""

from medlite.datasets.ecg import EcgCondition, ecg_profile, make_ecg, make_ecg_study
from medlite.datasets.lesions import make_lesion_image, make_lesions, write_lesion_dataset
from medlite.datasets.pasi_trial import (
    make_pasi_trial,
    pasi_by_visit,
    render_region_photos,
    trial_visit_table,
    write_pasi_trial,
)
from medlite.datasets.skin import (
    SSC_CLASSES,
    make_skin,
    make_skin_image,
    sample_skin_subject,
    write_skin_dataset,
)

__all__ = [
    "SSC_CLASSES",
    "EcgCondition",
    "ecg_profile",
    "make_ecg",
    "make_ecg_study",
    "make_lesion_image",
    "make_lesions",
    "make_pasi_trial",
    "make_skin",
    "make_skin_image",
    "pasi_by_visit",
    "render_region_photos",
    "sample_skin_subject",
    "trial_visit_table",
    "write_lesion_dataset",
    "write_pasi_trial",
    "write_skin_dataset",
]
