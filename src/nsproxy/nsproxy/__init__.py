"""nsproxy: one process, listeners inside many network namespaces."""

__version__ = "0.1.0"
