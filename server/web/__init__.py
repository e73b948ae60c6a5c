"""The HTTP side and the wiring: the app factory, handlers, the checks before an upgrade,
tokens, error pages, templates and static files. Imports every layer below it."""
