"""Benchmarks of the real path: capture trigger → outbox → bridge → WebSocket client.

Run ``python -m bench`` (or ``--quick``). Figures are printed and written to
``bench/results/latest.json``; nothing is asserted.
"""
