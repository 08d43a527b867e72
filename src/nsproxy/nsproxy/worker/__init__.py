"""A worker: an unprivileged process serving every tenant with the binder's sockets."""
