"""The chucky server: a self-hostable, Chucky-compatible agent-session server.

Importing this package is cheap; the server's dependencies are imported by its submodules.
"""
