"""The `ltu` command line: the library's commands (train, unlearn, bench) and the service's."""
