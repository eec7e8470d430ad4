/**
 * `useLiveChallenge(challengeId)`: one prop-trading challenge, live.
 *
 *     const { challenge, equityData, statusData, riskAlerts, isConnected, error, refresh, clearAlerts }
 *       = useLiveChallenge(challengeId);
 *
 * Reads the challenge's row (`challenge-updates`, the caller's own rows only),
 * then follows its room `challenge_<id>` from that row's seq, so nothing
 * between the two is missed: `EQUITY_UPDATED` → `equityData`,
 * `CHALLENGE_STATUS_CHANGED` → `statusData` (and `challenge.status`),
 * `RISK_ALERT` → `riskAlerts`, newest first. The room admits only the
 * challenge's owner (or the service key): anyone else gets `error`
 * (`unauthorized`) and `isConnected` stays false. `refresh()` reads the row
 * again and resubscribes from there; `clearAlerts()` empties `riskAlerts`.
 */

import { useCallback, useEffect, useReducer, useRef, useState } from "react";

import { RealtimeError, type RealtimeClient, type Unsubscribe } from "./client.js";
import type { Challenge, ChallengeStatusChanged, EquityUpdated, RiskAlert } from "./generated/channels.js";
import type { ChangeEvent } from "./protocol.js";
import { useRealtimeClient, useRealtimeStatus } from "./react.js";

export interface LiveChallengeOptions {
  client?: RealtimeClient | undefined;
  /** Keep at most this many alerts (newest first; default 50). */
  alertLimit?: number | undefined;
  enabled?: boolean | undefined;
}

export interface LiveChallenge {
  /** The challenge's row as last read or changed (null until read, or when not yours). */
  challenge: Challenge | null;
  /** The last EQUITY_UPDATED (null until a trade after the page opened). */
  equityData: EquityUpdated | null;
  /** The last CHALLENGE_STATUS_CHANGED. */
  statusData: ChallengeStatusChanged | null;
  /** RISK_ALERTs, newest first. */
  riskAlerts: RiskAlert[];
  /** The room is joined and the client is live (realtime or polling). */
  isConnected: boolean;
  error: RealtimeError | null;
  /** Read the row again and follow the room from there. */
  refresh: () => void;
  clearAlerts: () => void;
}

interface State {
  challenge: Challenge | null;
  equityData: EquityUpdated | null;
  statusData: ChallengeStatusChanged | null;
  riskAlerts: RiskAlert[];
  lastSeq: number;
}

type Action =
  | { type: "reset" }
  | { type: "row"; challenge: Challenge | null; seq: number }
  | { type: "event"; event: ChangeEvent<unknown>; limit: number }
  | { type: "clear" };

/** Challenge ids as the room spells them: `challenge_1`, never `challenge_0001`. */
const CHALLENGE_ID = /^[1-9][0-9]{0,18}$/;

const INITIAL: State = { challenge: null, equityData: null, statusData: null, riskAlerts: [], lastSeq: 0 };

function reducer(state: State, action: Action): State {
  switch (action.type) {
    case "reset":
      return INITIAL;
    case "row":
      return { ...state, challenge: action.challenge, lastSeq: Math.max(state.lastSeq, action.seq) };
    case "clear":
      return { ...state, riskAlerts: [] };
    case "event": {
      const { event } = action;
      // A resubscription may hand over an event again: each seq applies once.
      if (event.seq <= state.lastSeq) return state;
      const next = { ...state, lastSeq: event.seq };
      if (event.channel === "challenge-updates") {
        return { ...next, challenge: (event.data as Challenge | null) ?? state.challenge };
      }
      switch (event.event) {
        case "EQUITY_UPDATED":
          return { ...next, equityData: event.data as EquityUpdated };
        case "CHALLENGE_STATUS_CHANGED":
          return { ...next, statusData: event.data as ChallengeStatusChanged };
        case "RISK_ALERT":
          return { ...next, riskAlerts: [event.data as RiskAlert, ...state.riskAlerts].slice(0, action.limit) };
        default:
          return next;
      }
    }
  }
}

/** One challenge's row, equity, status and risk alerts, live (see the module's comment). */
export function useLiveChallenge(
  challengeId: string | number | null | undefined,
  options: LiveChallengeOptions = {},
): LiveChallenge {
  const client = useRealtimeClient(options.client);
  const mode = useRealtimeStatus(client);
  const { enabled = true } = options;
  const limit = useRef(options.alertLimit ?? 50);
  limit.current = options.alertLimit ?? 50;
  const [state, dispatch] = useReducer(reducer, INITIAL);
  const [error, setError] = useState<RealtimeError | null>(null);
  const [ready, setReady] = useState(false);
  const [generation, setGeneration] = useState(0);
  const id = challengeId === null || challengeId === undefined ? null : String(challengeId);
  const shownId = useRef<string | null>(null);

  useEffect(() => {
    if (!enabled || id === null) return undefined;
    if (shownId.current !== id) dispatch({ type: "reset" });
    shownId.current = id;
    setReady(false);
    if (!CHALLENGE_ID.test(id)) {
      setError(new RealtimeError("invalid_challenge_id", `not a challenge id: ${JSON.stringify(id)}`));
      return undefined;
    }
    let stopped = false;
    const subs: Unsubscribe[] = [];
    const controller = new AbortController();
    const fail = (failure: RealtimeError) => {
      if (stopped) return;
      setError(failure);
      setReady(false);
    };
    const onEvent = (event: ChangeEvent<unknown>) => dispatch({ type: "event", event, limit: limit.current });
    const onReady = () => {
      if (stopped) return;
      setReady(true);
      setError(null);
    };
    client
      .snapshot("challenge-updates", { filter: `id=eq.${id}`, signal: controller.signal })
      .then(
        (loaded) => {
          if (stopped) return;
          const row = (loaded.records[0] as Challenge | undefined) ?? null;
          dispatch({ type: "row", challenge: row, seq: loaded.seq });
          const follow = { since: loaded.seq, onError: fail };
          subs.push(
            client.subscribe(`challenge_${id}`, { ...follow, onReady }, onEvent),
            client.subscribe("challenge-updates", { ...follow, filter: `id=eq.${id}` }, onEvent),
          );
        },
        (reason: unknown) => {
          if (stopped) return;
          const failure =
            reason instanceof RealtimeError ? reason : new RealtimeError("snapshot_failed", String(reason));
          fail(failure);
        },
      );
    return () => {
      stopped = true;
      controller.abort();
      for (const unsubscribe of subs) unsubscribe();
    };
  }, [client, id, enabled, generation]);

  const refresh = useCallback(() => setGeneration((value) => value + 1), []);
  const clearAlerts = useCallback(() => dispatch({ type: "clear" }), []);
  return {
    challenge: state.challenge,
    equityData: state.equityData,
    statusData: state.statusData,
    riskAlerts: state.riskAlerts,
    isConnected: ready && error === null && (mode === "realtime" || mode === "polling"),
    error,
    refresh,
    clearAlerts,
  };
}
