"""Streaming trainer for expert training (issue 4): models, losses, data, engine, run, eval."""
