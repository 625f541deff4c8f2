"""One agency's 中間サーバー: a sub-package per flow, shared plumbing in ``core``.

See ``docs/architecture.md`` for the map of flows to packages.
"""
