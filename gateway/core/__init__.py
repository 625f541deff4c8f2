"""Shared plumbing of every flow: configuration, database, errors, HTTP, TLS, access, state.

It imports no flow package.
"""
