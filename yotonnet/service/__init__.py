"""A mesh node as a service: twistd plugin, config file, status HTTP, logs.

:func:`make_service` (from :mod:`.node`) builds what ``twistd yotonnet`` and
``yotonnet node`` run; :mod:`.tap` is the twistd plugin's options and maker,
:mod:`.config` the TOML file, :mod:`.status` and :mod:`.web` the status report
and its HTTP site, :mod:`.logs` the log observers.
"""

from .node import make_service

__all__ = ["make_service"]
