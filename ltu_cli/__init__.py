"""The `ltu` command line: the library's commands (core: train, unlearn, bench) and the service's
(serve: serve, worker, migrate, keys, purge; certificates: certificate verify; demo; request: the
HTTP client commands), each module with a `register(subparsers)` that main.py calls; common holds
what they share."""
