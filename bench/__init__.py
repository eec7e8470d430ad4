"""Benchmarks: the real path against the raw floor and the naive approach, in one run.

``python -m bench`` (``make bench``, about 17 minutes) or ``python -m bench --quick``
(``make bench-quick``, under 2 minutes) runs the scenarios of issue 7:

* P1 per-user latency, P2 capacity ramp, P3 fan-out: the same clients and the same
  writer against the bridge (capture trigger → outbox → sequencer → hub → WebSocket),
  the raw floor (trigger + pg_notify → asyncpg LISTEN → bare ``websockets``) and the
  naive approach (Starlette loop awaiting ``send_json`` per client per event);
* P4 memory per idle subscribed connection, P5 connections held with heartbeats
  (and a stretch), P7 statements the bridge sends to Postgres while idle (counted by a
  proxy in front of Postgres), P6 INSERT throughput with and without capture, P8 the
  naive approach's figures and 5-second polling next to ours.

It prints a table (value, target, met, floor, ratio) and a table of details (CPU of
each side, connect times, round trips), and writes ``bench/results/latest.json``.
``--profile`` records py-spy profiles of the bridge (``bench/results/profile-*.txt``);
``--count-queries`` routes the P1-P3 bridge through the counting proxy. Nothing is
asserted: the test suite has no timed assertions.
"""
