// @vitest-environment happy-dom
/**
 * useLiveChallenge against the real bridge: the owner sees the row, each
 * EQUITY_UPDATED, CHALLENGE_STATUS_CHANGED and RISK_ALERT as the trades
 * commit; anyone else is refused; refresh and clearAlerts do what they say.
 */

import { expect, inject, test } from "vitest";

import { useLiveChallenge } from "../../src/react.js";
import { sql, userToken } from "../support/bridge.js";
import { testClient, uniqueUser, until } from "../support/helpers.js";
import { mount, track } from "../support/cleanup.js";

const bridge = inject("bridge");
let nextId = 1_000_000 + (Date.now() % 1_000_000) * 100;

async function challengeOf(user: string): Promise<number> {
  nextId += 1;
  await sql(bridge, `INSERT INTO challenges (id, user_id) VALUES (${nextId}, '${user}')`);
  return nextId;
}

function trade(id: number, user: string, pnl: string): Promise<void> {
  return sql(
    bridge,
    `INSERT INTO challenge_trades (challenge_id, user_id, symbol, pnl) VALUES (${id}, '${user}', 'EURUSD', ${pnl})`,
  );
}

test("the owner follows equity, status and risk alerts as trades commit", async () => {
  const user = uniqueUser("challenge");
  const id = await challengeOf(user);
  const token = await userToken(bridge.dataDir, user, 600);
  const client = track(testClient(bridge, { apiKey: bridge.anonKey, accessToken: token }));
  const view = mount(() => useLiveChallenge(id), client);

  await until(() => view.result.current.isConnected, "the room joined");
  expect(view.result.current.error).toBeNull();
  expect(view.result.current.challenge).toMatchObject({ id, user_id: user, status: "ACTIVE", current_equity: 10000 });
  expect(view.result.current.equityData).toBeNull();

  await trade(id, user, "200");
  await until(() => view.result.current.equityData?.current_equity === "10200.00", "the first EQUITY_UPDATED");
  expect(view.result.current.equityData).toMatchObject({
    challenge_id: String(id),
    previous_equity: "10000.00",
    trade_pnl: "200.00",
    total_trades: 1,
  });
  await until(() => view.result.current.challenge?.current_equity === 10200, "the row following");

  // 10,200 → 9,590: a 4.10% drawdown of the day's 10,000 crosses 0.8 × 5%.
  await trade(id, user, "-610");
  await until(() => view.result.current.riskAlerts.length === 1, "the risk alert");
  expect(view.result.current.riskAlerts[0]).toMatchObject({
    alert_type: "HIGH_DAILY_DRAWDOWN",
    severity: "MEDIUM",
    drawdown_percentage: "4.10",
  });
  view.result.current.clearAlerts();
  await until(() => view.result.current.riskAlerts.length === 0, "the alerts cleared");

  await trade(id, user, "-100"); // 9,490: 5.10% down, past the day's limit
  await until(() => view.result.current.statusData !== null, "the status change");
  expect(view.result.current.statusData).toMatchObject({
    old_status: "ACTIVE",
    new_status: "FAILED",
    reason: "DAILY_LOSS_LIMIT",
  });
  await until(() => view.result.current.challenge?.status === "FAILED", "the row's status");
  expect(view.result.current.riskAlerts).toEqual([]); // already above the level: no second alert

  // refresh(): the row read again and the room joined again, from the row's seq.
  view.result.current.refresh();
  await until(() => !view.result.current.isConnected, "refreshing");
  await until(() => view.result.current.isConnected, "rejoined after refresh");
  expect(view.result.current.challenge?.total_trades).toBe(3);
  await trade(id, user, "10");
  await until(() => view.result.current.equityData?.total_trades === 4, "events after refresh");
});

test("someone else's challenge, an odd id or no id: refused, never shown", async () => {
  const owner = uniqueUser("owner");
  const intruder = uniqueUser("intruder");
  const id = await challengeOf(owner);
  const token = await userToken(bridge.dataDir, intruder, 600);
  const client = track(testClient(bridge, { apiKey: bridge.anonKey, accessToken: token }));
  const theirs = mount(() => useLiveChallenge(id), client);
  const odd = mount(() => useLiveChallenge(`0${id}`), client);
  const none = mount(() => useLiveChallenge(null), client);

  await until(() => theirs.result.current.error !== null, "the refusal");
  expect(theirs.result.current.error?.code).toBe("unauthorized");
  expect(theirs.result.current.error?.message).toContain(`challenge_${id}`);
  expect(theirs.result.current.isConnected).toBe(false);
  expect(theirs.result.current.challenge).toBeNull(); // the row is not theirs to read either
  await until(() => odd.result.current.error !== null, "the odd id refused");
  expect(odd.result.current.error?.code).toBe("invalid_challenge_id");

  await trade(id, owner, "100");
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(theirs.result.current.equityData).toBeNull();
  expect(none.result.current).toMatchObject({ isConnected: false, error: null, challenge: null, equityData: null });
});
