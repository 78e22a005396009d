"""``medlite serve``: a web page and a JSON API in front of trained runs.

:func:`~medlite.serve.runs.load_served_runs` loads the runs named on the command line,
:func:`~medlite.serve.app.create_app` builds the FastAPI application around them, and
:mod:`medlite.serve.security` keeps it on loopback unless an access token is set.
"""

from medlite.serve.app import ServeSettings, create_app
from medlite.serve.runs import ServedRun, load_served_runs
from medlite.serve.security import is_loopback, resolve_token
from medlite.serve.store import VisitStore
from medlite.serve.uploads import UploadLimits

__all__ = ["ServeSettings", "ServedRun", "UploadLimits", "VisitStore", "create_app",
           "is_loopback", "load_served_runs", "resolve_token"]
