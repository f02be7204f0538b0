"""`make demo`: the whole flow on an embedded default (see demo/__main__.py)."""
