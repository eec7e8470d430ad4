import type { PositionUpdate, Status, TradeUpdate } from "@realtime-bridge/client";
import {
  usePortfolio,
  useRealtimePositions,
  useRealtimeStatus,
  useRealtimeTrades,
} from "@realtime-bridge/client/react";

import { ChallengePanel } from "./Challenge";
import {
  formatMoney,
  formatNumber,
  formatPct,
  formatTime,
  positionPnl,
  sign,
} from "./format";

// Stable empty snapshots: a real app would load these from its API and pass
// the seq they were read at as `since`. This example has no snapshot API, so
// it replays the bridge's retained log from the start (`since: 0`) instead.
const NO_POSITIONS: readonly PositionUpdate[] = [];
const NO_TRADES: readonly TradeUpdate[] = [];
const FROM_THE_START = 0;

const MODE_LABEL: Record<Status, string> = {
  realtime: "Live",
  polling: "Live (polling fallback)",
  connecting: "Connecting…",
  offline: "Offline",
};

interface Props {
  userId: string | null;
  bridgeUrl: string;
}

export function Dashboard({ userId, bridgeUrl }: Props) {
  const mode = useRealtimeStatus();
  // Row-level security on the bridge already limits a user token to its own
  // rows; the filter makes the intent explicit (and scopes a service key).
  const scope = userId ? { userId } : {};
  const positions = useRealtimePositions(NO_POSITIONS, { ...scope, since: FROM_THE_START });
  const trades = useRealtimeTrades(NO_TRADES, { ...scope, since: FROM_THE_START, limit: 50 });
  const { portfolio } = usePortfolio(userId, { since: FROM_THE_START });

  const open = positions.positions.filter((position) => position.status === "open");
  const marketValue = open.reduce((sum, position) => sum + (position.market_value ?? 0), 0);
  const unrealized = open.reduce((sum, position) => sum + (positionPnl(position) ?? 0), 0);
  const error = positions.error ?? trades.error;

  return (
    <div className="dashboard">
      <header>
        <h1>Live portfolio</h1>
        <span className="who">{userId ? `user ${userId}` : "all users (service key)"}</span>
        <span id="mode" className="mode" data-mode={mode} title={bridgeUrl}>
          {MODE_LABEL[mode]}
        </span>
        <span className="updated">last update {formatTime(positions.lastUpdate)}</span>
      </header>

      {error && (
        <p className="error" role="alert">
          {error.code}: {error.message}
        </p>
      )}

      <section className="cards">
        <Card
          id="portfolio-value"
          label="Portfolio value"
          value={formatMoney(portfolio ? portfolio.total_value : marketValue)}
          note={portfolio ? `cash ${formatMoney(portfolio.cash)}` : "open positions at market"}
        />
        <Card
          id="unrealized-pnl"
          label="Unrealized P&L"
          value={formatMoney(unrealized)}
          tone={sign(unrealized)}
          note={portfolio?.daily_pnl != null ? `today ${formatMoney(portfolio.daily_pnl)}` : ""}
        />
        <Card id="open-count" label="Open positions" value={String(open.length)} />
        <Card id="trade-count" label="Trades" value={String(trades.trades.length)} />
      </section>

      <div className="columns">
        <section>
          <h2>Positions</h2>
          <table id="positions">
            <thead>
              <tr>
                <th>Symbol</th>
                <th>Qty</th>
                <th>Entry</th>
                <th>Price</th>
                <th>Value</th>
                <th>P&amp;L</th>
                <th>P&amp;L %</th>
              </tr>
            </thead>
            <tbody>
              {positions.positions.length === 0 && (
                <tr className="empty">
                  <td colSpan={7}>No positions yet: they appear here the moment they are written.</td>
                </tr>
              )}
              {positions.positions.map((position) => {
                const pnl = positionPnl(position);
                return (
                  <tr
                    key={position.id}
                    data-id={position.id}
                    data-symbol={position.symbol}
                    className={position.status}
                  >
                    <td className="symbol">{position.symbol}</td>
                    <td>{formatNumber(position.quantity)}</td>
                    <td>{formatMoney(position.entry_price)}</td>
                    {/* Re-keyed on every price so the cell flashes when it changes. */}
                    <td key={position.current_price ?? "none"} className="price flash">
                      {formatMoney(position.current_price)}
                    </td>
                    <td>{formatMoney(position.market_value)}</td>
                    <td className={`pnl ${sign(pnl)}`}>{formatMoney(pnl)}</td>
                    <td className={`pnl-pct ${sign(position.unrealized_pnl_pct)}`}>
                      {formatPct(position.unrealized_pnl_pct)}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </section>

        <section>
          <h2>Trades</h2>
          <ol id="trades" className="trades">
            {trades.trades.length === 0 && <li className="empty">No trades yet.</li>}
            {trades.trades.map((trade) => (
              <li key={trade.id} data-id={trade.id} data-symbol={trade.symbol} className="flash">
                <span className={`side ${trade.signal_type.toLowerCase()}`}>{trade.signal_type}</span>
                <span className="symbol">{trade.symbol}</span>
                <span>
                  {formatNumber(trade.quantity)} @ {formatMoney(trade.entry_price)}
                </span>
                <span className="status">{trade.status}</span>
                <span className={sign(trade.pnl)}>{trade.pnl === null ? "" : formatMoney(trade.pnl)}</span>
                <time>{formatTime(trade.executed_at ?? trade.updated_at)}</time>
              </li>
            ))}
          </ol>
        </section>
      </div>

      {userId && <ChallengePanel userId={userId} />}
    </div>
  );
}

interface CardProps {
  id: string;
  label: string;
  value: string;
  note?: string;
  tone?: "up" | "down" | "flat";
}

function Card({ id, label, value, note, tone }: CardProps) {
  return (
    <div className="card" id={id}>
      <span className="label">{label}</span>
      <strong className={tone}>{value}</strong>
      {note && <small>{note}</small>}
    </div>
  );
}
