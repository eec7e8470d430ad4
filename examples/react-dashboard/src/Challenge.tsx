import type { Challenge as ChallengeRow } from "@realtime-bridge/client";
import { useChannel, useLiveChallenge } from "@realtime-bridge/client/react";

import { formatMoney, formatTime } from "./format";

/** Every challenge row of this user, from the start of the retained log (see Dashboard). */
const FROM_THE_START = 0;

/**
 * The user's newest challenge, live: its room `challenge_<id>` (which only its
 * owner may join) brings EQUITY_UPDATED, CHALLENGE_STATUS_CHANGED and RISK_ALERT.
 */
export function ChallengePanel({ userId }: { userId: string }) {
  const challenges = useChannel<"challenge-updates", ChallengeRow>("challenge-updates", {
    filters: { user_id: userId },
    since: FROM_THE_START,
  });
  const newest = challenges.records.reduce<number | null>(
    (best, row) => (best === null || row.id > best ? row.id : best),
    null,
  );
  const live = useLiveChallenge(newest);
  const row = live.challenge;
  if (newest === null) {
    return (
      <section id="challenge" className="challenge">
        <h2>Challenge</h2>
        <p className="empty">No challenge yet.</p>
      </section>
    );
  }
  const drawdown =
    row && row.daily_start_equity > 0
      ? Math.max(0, ((row.daily_start_equity - row.current_equity) / row.daily_start_equity) * 100)
      : null;
  return (
    <section id="challenge" className="challenge" data-id={newest} data-connected={live.isConnected}>
      <h2>
        Challenge {newest}{" "}
        <span id="challenge-status" className={`status ${(row?.status ?? "").toLowerCase()}`}>
          {row?.status ?? "…"}
        </span>
      </h2>
      {live.error && (
        <p className="error" role="alert">
          {live.error.code}: {live.error.message}
        </p>
      )}
      <dl className="figures">
        <dt>Equity</dt>
        <dd id="challenge-equity">{formatMoney(row?.current_equity)}</dd>
        <dt>Daily drawdown</dt>
        <dd id="challenge-drawdown">
          {drawdown === null ? "–" : `${drawdown.toFixed(2)}% (limit ${row?.max_daily_loss_pct ?? "–"}%)`}
        </dd>
        <dt>Last trade</dt>
        <dd id="challenge-last-trade">
          {live.equityData
            ? `${live.equityData.trade_symbol} ${live.equityData.trade_pnl} → ${live.equityData.current_equity}`
            : "–"}
        </dd>
        {live.statusData && (
          <>
            <dt>Status change</dt>
            <dd id="challenge-status-change">
              {live.statusData.old_status} → {live.statusData.new_status} ({live.statusData.reason})
            </dd>
          </>
        )}
      </dl>
      <h3>
        Risk alerts{" "}
        {live.riskAlerts.length > 0 && (
          <button type="button" onClick={live.clearAlerts}>
            clear
          </button>
        )}
      </h3>
      <ol id="risk-alerts" className="alerts">
        {live.riskAlerts.length === 0 && <li className="empty">None.</li>}
        {live.riskAlerts.map((alert) => (
          <li key={alert.alert_timestamp} className={`alert ${alert.severity.toLowerCase()}`}>
            <strong>{alert.title}</strong> <span className="message">{alert.message}</span>{" "}
            <time>{formatTime(alert.alert_timestamp)}</time>
          </li>
        ))}
      </ol>
    </section>
  );
}
