"""Registers the ``yotonnet`` twistd plugin (installed as twisted/plugins/)."""

from yotonnet.tap import ServiceMaker

yotonnet_node = ServiceMaker()
