"""The binder: the privileged process (namespaces, sockets, workers, reload, upgrade)."""
