"""The HTTP layer: routes, dependencies, error mapping. Never imported by the worker."""
