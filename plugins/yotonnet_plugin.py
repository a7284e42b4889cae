"""Registers the ``yotonnet`` twistd plugin (installed as twisted/plugins/).

Kept to one import and one object: twistd imports every plugin module to list
them, and this folder must have no ``__init__.py`` (it is mapped onto the
``twisted.plugins`` namespace by pyproject.toml).
"""

from yotonnet.service.tap import ServiceMaker

yotonnet_node = ServiceMaker()
