"""permessage-deflate on a realistic position update: bytes saved and CPU per message.

``python -m bench.deflate [--receivers 1000] [--events 2000]`` builds the
`db_change` frames the JSON protocol sends for a position UPDATE (new and
old row, computed P&L fields, a per-subscription prefix) through the same
`Event` and `wire.Encoder` the bridge uses, and prints:

* the frame's size plain and compressed (parts deflated apart, as sent, and
  the whole frame deflated at once, for what compressing apart costs);
* CPU per delivered message: compress-once (each event's body deflated
  once, each receiver's prefix once, then reused) against deflating every
  receiver's frame on its own (what a context-free per-connection
  compressor, e.g. websockets' own, would do), and the plain path.

CPU is process time on this (shared) machine: compare the rows with each
other, not with another run.
"""

from __future__ import annotations

import argparse
import random
import time
import zlib
from collections.abc import Callable

from realtime_bridge.events import Event, subscription_prefix
from realtime_bridge.protocols.wire import Encoder, write_frames


def position_event(seq: int, rng: random.Random) -> Event:
    """A positions UPDATE as the trading plugin types it (current price moved)."""
    entry = round(rng.uniform(20, 900), 2)
    old_price = round(entry * rng.uniform(0.9, 1.1), 2)
    new_price = round(old_price * rng.uniform(0.995, 1.005), 2)
    quantity = float(rng.randrange(1, 500))

    def row(price: float) -> dict[str, object]:
        return {
            "id": 100_000 + seq % 5000,
            "user_id": f"8d3c5e0a-4f1b-4c7e-9a2d-{seq % 1000:012d}",
            "symbol": rng.choice(["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META"]),
            "quantity": quantity,
            "entry_price": entry,
            "current_price": price,
            "unrealized_pnl": round((price - entry) * quantity, 2),
            "stop_loss": round(entry * 0.92, 2),
            "take_profit": round(entry * 1.15, 2),
            "market_value": round(price * quantity, 2),
            "pnl_percent": round((price - entry) / entry * 100, 4),
            "updated_at": f"2026-12-02T17:{seq % 60:02d}:{seq % 57:02d}.{seq % 999:06d}+00:00",
        }

    new, old = row(new_price), row(old_price)
    old["symbol"] = new["symbol"]
    return Event(
        seq=seq,
        channel="position-updates",
        event="position_update",
        operation="UPDATE",
        table="public.positions",
        data=new,
        old=old,
        timestamp=f"2026-12-02T17:00:00.{seq % 999:06d}+00:00",
        user_id=new["user_id"],
        record_id=new["id"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--wbits", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(14)
    events = [position_event(seq, rng) for seq in range(1, args.events + 1)]
    prefixes = [subscription_prefix(f"sub_{i}_{i * 7919:08x}") for i in range(args.receivers)]
    deliveries: int = args.events * args.receivers

    plain = sum(len("".join(e.frame_for(prefixes[0])).encode()) for e in events) / len(events)
    sizer = Encoder()
    apart = 0
    whole = 0
    for event in events:
        frame = event.frame_for(prefixes[0])
        apart += sum(len(b) for b in sizer.deflated_parts(frame, args.wbits)[1:])
        compressor = zlib.compressobj(6, zlib.DEFLATED, -args.wbits, 8)
        whole += len(compressor.compress("".join(frame).encode()) + compressor.flush()) - 1
    apart_avg, whole_avg = apart / len(events), whole / len(events)

    def timed(run: Callable[[], None]) -> float:
        started = time.process_time()
        run()
        return (time.process_time() - started) / deliveries * 1e6

    def compress_once() -> None:
        encoder = Encoder(limit=1 << 30)
        for event in events:
            for prefix in prefixes:
                for _ in write_frames(encoder, [event.frame_for(prefix)], False, args.wbits):
                    pass

    def per_receiver() -> None:
        for event in events:
            for prefix in prefixes:
                data = "".join(event.frame_for(prefix)).encode()
                compressor = zlib.compressobj(6, zlib.DEFLATED, -args.wbits, 8)
                compressor.compress(data)
                compressor.flush(zlib.Z_SYNC_FLUSH)

    def uncompressed() -> None:
        encoder = Encoder(limit=1 << 30)
        for event in events:
            for prefix in prefixes:
                for _ in write_frames(encoder, [event.frame_for(prefix)], False):
                    pass

    once, each, none = timed(compress_once), timed(per_receiver), timed(uncompressed)
    print(
        f"position update db_change frame, {args.events} events x {args.receivers} receivers "
        f"(window {args.wbits} bits)"
    )
    print(f"  size plain            {plain:8.0f} B")
    print(
        f"  size deflated, parts  {apart_avg:8.0f} B  ({(1 - apart_avg / plain) * 100:.0f}% saved,"
        " as sent: prefix and body deflated apart)"
    )
    print(
        f"  size deflated, whole  {whole_avg:8.0f} B  ({(1 - whole_avg / plain) * 100:.0f}% saved,"
        " one stream per frame)"
    )
    print(f"  CPU per delivered message: plain {none:.2f} µs, compress-once {once:.2f} µs, ")
    print(f"    deflated per receiver {each:.2f} µs ({each / max(once, 1e-9):.0f}x compress-once)")


if __name__ == "__main__":
    main()
