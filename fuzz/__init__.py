"""Fuzz targets, the seed corpus and the runners for the wire decoder and the WebSocket session.

See docs/reliability.md for how to run them and the figures of the last long run.
"""
