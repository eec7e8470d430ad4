"""Market data: `price-updates`, an ephemeral, conflated, per-symbol channel.

Ticks never touch Postgres and carry no global seq: they are not replayed,
only the latest price of each symbol matters. The flow is

    POST /api/prices, publish_prices(), a feed  ──▶  Market.publish
        ──▶ PriceCache (last tick per symbol; Redis mirror when configured)
        ──▶ PriceWatch of every subscription watching that symbol

A `PriceWatch` is one subscription's conflation buffer: a dict of symbol →
latest tick. A new tick for a symbol replaces the one still waiting, so a
client that cannot keep up receives the latest price of each symbol rather
than a growing queue; the buffer never holds more entries than the
subscription has symbols. The connection's writer pulls from it only when
it is ready to write (`QueueOutlet.take`), which is what "flushed when the
socket can take more" means. An optional `max_rate` caps how many updates
per second per symbol the subscription receives (Lightstreamer's MERGE).

Each tick's JSON body is encoded once; a frame adds only the subscription
prefix and the subscription's own delivery counter (`seq`: increasing per
subscription, continuing after a client's `since`, so resuming clients do
not drop it as a duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

logger = logging.getLogger(__name__)

PRICE_CHANNEL = "price-updates"
PRICE_EVENT = "price_update"

# Letters, digits and the punctuation real tickers use (BRK.B, BTC/USDT, ES=F, ^GSPC, EUR-USD).
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/=^\-]{0,31}$"
Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN, strict=True)]
Number = Annotated[float, Field(strict=True)]


class TickIn(BaseModel):
    """One tick as a publisher sends it. Symbols are exact strings: "0001" is not "1"."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    symbol: Symbol
    price: Number
    bid: Number | None = None
    ask: Number | None = None
    volume: Annotated[float, Field(strict=True, ge=0)] | None = None
    exchange: Annotated[str, StringConstraints(max_length=32, strict=True)] | None = None
    # The source's time (ISO 8601 or epoch seconds); the bridge's receive time when absent.
    timestamp: datetime | Annotated[float, Field(strict=True, ge=0)] | None = None


TICKS: TypeAdapter[list[TickIn]] = TypeAdapter(list[TickIn])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True, eq=False)
class Tick:
    """A validated tick; `body` is its shared JSON (after the frame's opening fields)."""

    symbol: str
    price: float
    bid: float | None
    ask: float | None
    volume: float | None
    exchange: str | None
    ts: float  # source time, epoch seconds
    received: float  # bridge time, epoch seconds
    source_time: bool = False  # `ts` came from the publisher
    _body: str | None = field(default=None, repr=False)

    @classmethod
    def from_input(cls, tick: TickIn, now: float) -> Tick:
        if tick.timestamp is None:
            ts, given = now, False
        elif isinstance(tick.timestamp, datetime):
            stamp = tick.timestamp
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            ts, given = stamp.timestamp(), True
        else:
            ts, given = float(tick.timestamp), True
        return cls(
            tick.symbol,
            tick.price,
            tick.bid,
            tick.ask,
            tick.volume,
            tick.exchange,
            ts,
            now,
            given,
        )

    @classmethod
    def of(cls, symbol: str, price: float, **fields: Any) -> Tick:
        """A tick from trusted code (feeds, tests), validated like any other."""
        return parse_ticks([{"symbol": symbol, "price": price, **fields}])[0]

    def data(self) -> dict[str, Any]:
        """What a client receives as `data`."""
        return {
            "symbol": self.symbol,
            "price": self.price,
            "bid": self.bid,
            "ask": self.ask,
            "volume": self.volume,
            "exchange": self.exchange,
            "timestamp": _iso(self.ts),
        }

    @property
    def body(self) -> str:
        if self._body is None:
            encoded = orjson.dumps(
                {
                    "channel": PRICE_CHANNEL,
                    "event": PRICE_EVENT,
                    "table": None,
                    "operation": "BROADCAST",
                    "user_id": None,
                    "record_id": self.symbol,
                    "data": self.data(),
                    "old": None,
                    "timestamp": _iso(self.received),
                }
            ).decode()
            self._body = encoded[1:]
        return self._body

    def to_json(self) -> dict[str, Any]:
        """The tick as stored in Redis and sent between instances."""
        return {
            "symbol": self.symbol,
            "price": self.price,
            "bid": self.bid,
            "ask": self.ask,
            "volume": self.volume,
            "exchange": self.exchange,
            "ts": self.ts,
            "received": self.received,
            "source_time": self.source_time,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Tick:
        return cls(
            str(value["symbol"]),
            float(value["price"]),
            value.get("bid"),
            value.get("ask"),
            value.get("volume"),
            value.get("exchange"),
            float(value["ts"]),
            float(value.get("received", value["ts"])),
            bool(value.get("source_time", False)),
        )


def parse_ticks(raw: Any, now: float | None = None) -> list[Tick]:
    """Validate a list of tick objects (raises pydantic's ValidationError)."""
    stamp = time.time() if now is None else now
    return [Tick.from_input(tick, stamp) for tick in TICKS.validate_python(raw)]


class PriceCache:
    """The last tick of every symbol, in memory (the Redis mirror lives in `market_redis`)."""

    def __init__(self) -> None:
        self.prices: dict[str, Tick] = {}

    def get(self, symbol: str) -> Tick | None:
        return self.prices.get(symbol)

    def put(self, tick: Tick) -> bool:
        """Keep `tick` unless it is older (by source time) than the one held; True if kept."""
        held = self.prices.get(tick.symbol)
        if held is not None and tick.source_time and held.source_time and tick.ts < held.ts:
            return False
        self.prices[tick.symbol] = tick
        return True

    def __len__(self) -> int:
        return len(self.prices)


# (subscription prefix, delivery seq, tick) → one frame's text.
PriceRenderer = Callable[[str, int, Tick], str]


def render_ws(prefix: str, seq: int, tick: Tick) -> str:
    return f'{prefix}"seq":{seq},{tick.body}'


class PriceWatch:
    """One subscription's interest in some symbols, and its conflation buffer.

    Bounded by construction: `pending` holds at most one tick per watched symbol.
    """

    def __init__(
        self,
        market: Market,
        symbols: frozenset[str],
        *,
        prefix: str,
        wake: Callable[[], None],
        render: PriceRenderer = render_ws,
        max_rate: float | None = None,
        seq: int = 0,
    ) -> None:
        self.market = market
        self.symbols = symbols
        self.prefix = prefix
        self.render = render
        self.wake = wake
        self.interval = 1.0 / max_rate if max_rate else 0.0
        self.seq = seq
        self.pending: dict[str, Tick] = {}
        self.sent_at: dict[str, float] = {}
        self.conflated = 0
        self.delivered = 0
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    def push(self, tick: Tick) -> None:
        if tick.symbol in self.pending:
            self.conflated += 1
        self.pending[tick.symbol] = tick
        if self._timer is None:
            self.wake()

    def __bool__(self) -> bool:
        """True when something may be pulled now."""
        return bool(self.pending) and self._timer is None

    def pull(self, limit: int) -> list[str]:
        """Up to `limit` frames of the latest ticks that may be sent now."""
        if not self.pending or limit <= 0:
            return []
        if not self.interval:
            if len(self.pending) <= limit:
                ticks = list(self.pending.values())
                self.pending = {}
            else:
                ticks = []
                for symbol in list(self.pending)[:limit]:
                    ticks.append(self.pending.pop(symbol))
            return self._frames(ticks)
        now = time.monotonic()
        ticks = []
        earliest: float | None = None
        for symbol in list(self.pending):
            due = self.sent_at.get(symbol, -math.inf) + self.interval
            if due <= now:
                if len(ticks) >= limit:
                    earliest = now  # more are due: the writer comes back for them
                    break
                ticks.append(self.pending.pop(symbol))
                self.sent_at[symbol] = now
            elif earliest is None or due < earliest:
                earliest = due
        if earliest is not None and earliest > now and self._timer is None:
            # Held back by the rate cap: look again when the first of them is due.
            self._timer = asyncio.get_running_loop().call_later(earliest - now, self._due)
        return self._frames(ticks)

    def _due(self) -> None:
        self._timer = None
        if self.pending and not self.closed:
            self.wake()

    def _frames(self, ticks: list[Tick]) -> list[str]:
        frames = []
        for tick in ticks:
            self.seq += 1
            frames.append(self.render(self.prefix, self.seq, tick))
        self.delivered += len(frames)
        return frames

    def close(self) -> None:
        self.closed = True
        self.pending = {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class MarketStats:
    ticks_in: int = 0
    stale_ticks: int = 0
    batches: int = 0
    watches: int = 0


class Market:
    """Routes ticks to the watches of their symbols and keeps the last price of each."""

    def __init__(self, cache: PriceCache | None = None) -> None:
        self.cache = cache or PriceCache()
        self.watchers: dict[str, set[PriceWatch]] = {}
        self.listeners: list[Callable[[list[Tick]], None]] = []
        # Called with each locally published batch (the Redis backplane).
        self.forward: Callable[[list[Tick]], None] | None = None
        # Fills a watch's first prices from a shared cache (Redis) for symbols not held here.
        self.lookup: Callable[[list[str]], Any] | None = None
        self.stats = MarketStats()

    def publish(self, ticks: Iterable[Tick], *, forward: bool = True) -> int:
        """Route `ticks` (in order); returns how many were kept (stale ones are dropped)."""
        kept: list[Tick] = []
        watchers = self.watchers
        for tick in ticks:
            if not self.cache.put(tick):
                self.stats.stale_ticks += 1
                continue
            kept.append(tick)
            for watch in watchers.get(tick.symbol, ()):
                watch.push(tick)
        self.stats.ticks_in += len(kept)
        self.stats.batches += 1
        if kept:
            if forward and self.forward is not None:
                self.forward(kept)
            for listener in self.listeners:
                try:
                    listener(kept)
                except Exception:  # one listener's bug must not stop prices
                    logger.exception("a price listener failed")
        return len(kept)

    def watch(
        self,
        symbols: Iterable[str],
        *,
        prefix: str,
        wake: Callable[[], None],
        render: PriceRenderer = render_ws,
        max_rate: float | None = None,
        seq: int = 0,
    ) -> PriceWatch:
        """Start watching `symbols`; their current prices are pending at once."""
        watch = PriceWatch(
            self,
            frozenset(symbols),
            prefix=prefix,
            wake=wake,
            render=render,
            max_rate=max_rate,
            seq=seq,
        )
        missing = []
        for symbol in sorted(watch.symbols):
            self.watchers.setdefault(symbol, set()).add(watch)
            cached = self.cache.get(symbol)
            if cached is not None:
                watch.push(cached)
            else:
                missing.append(symbol)
        if missing and self.lookup is not None:
            self.lookup(missing)
        self.stats.watches += 1
        return watch

    def unwatch(self, watch: PriceWatch) -> None:
        watch.close()
        for symbol in watch.symbols:
            members = self.watchers.get(symbol)
            if members is not None:
                members.discard(watch)
                if not members:
                    del self.watchers[symbol]

    def fill(self, ticks: Iterable[Tick]) -> None:
        """Prices read from a shared cache: kept where newer, given to watches still waiting."""
        for tick in ticks:
            if self.cache.get(tick.symbol) is None and self.cache.put(tick):
                for watch in self.watchers.get(tick.symbol, ()):
                    if tick.symbol not in watch.pending:
                        watch.push(tick)

    def to_json(self) -> dict[str, Any]:
        return {
            "symbols": len(self.cache),
            "watched_symbols": len(self.watchers),
            "ticks_in": self.stats.ticks_in,
            "stale_ticks": self.stats.stale_ticks,
            "batches": self.stats.batches,
        }
