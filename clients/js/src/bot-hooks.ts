/**
 * React hooks for trading bots: the bots, their orders, their activity log
 * and their P&L, live (channels `bot-updates`, `order-updates`,
 * `activity-logs`, `pnl-updates`; plugins/bots.py).
 *
 *     const { bots } = useBotUpdates([], { userId });
 *     const { orders, lastFill } = useOrderUpdates([], { userId, botId: 41 });
 *     const { logs } = useActivityLogUpdates([], { userId });
 *     const { pnlByBot, totalPnl } = usePnLUpdates([], { userId });
 *
 * Built on `useChannel`: the same provider, reconnects, resume, polling
 * fallback and `snapshot` option. With a user token the bridge already shows
 * only that user's rows; `userId` narrows a service-key client the same way.
 */

import { useState } from "react";

import type { ActivityLog, BotUpdate, ChannelEvents, OrderUpdate, PnLUpdate } from "./generated/channels.js";
import { scoped, useChannel, view, type HookOptions, type RealtimeView } from "./react.js";

const NONE: readonly never[] = [];

/** A bot event as it arrived: which one, and the bot (its last state for `bot_deleted`). */
export interface BotEvent {
  event: ChannelEvents["bot-updates"];
  bot: BotUpdate;
  seq: number;
}

/**
 * Live bots (channel `bot-updates`): `bot_created` adds a bot, `bot_updated`
 * replaces it, `bot_deleted` removes it (a row deletion or a published event).
 */
export function useBotUpdates(
  initialBots: readonly BotUpdate[] = NONE,
  options: HookOptions<BotUpdate> = {},
): RealtimeView & { bots: BotUpdate[]; lastEvent: BotEvent | null } {
  const [lastEvent, setLastEvent] = useState<BotEvent | null>(null);
  const state = useChannel<"bot-updates", BotUpdate>("bot-updates", {
    ...scoped(options),
    initial: initialBots,
    removes: (event) => event.event === "bot_deleted",
    onEvent: (event) => {
      const bot = event.data ?? event.old;
      if (bot !== null) {
        setLastEvent({ event: event.event as BotEvent["event"], bot, seq: event.seq });
      }
      options.onEvent?.(event);
    },
  });
  return view(state, { bots: state.records, lastEvent });
}

export type OrderHookOptions = HookOptions<OrderUpdate> & {
  /** Only this bot's orders (adds `bot_id` to the filter). */
  botId?: number | undefined;
  /** How many recent fills `fills` keeps (default 50). */
  fillLimit?: number | undefined;
};

/**
 * Live orders (channel `order-updates`). Every change is an `order_update`
 * but the one in which an order becomes FILLED, which is its `order_filled`
 * (once per order): `fills` lists those, newest first.
 */
export function useOrderUpdates(
  initialOrders: readonly OrderUpdate[] = NONE,
  options: OrderHookOptions = {},
): RealtimeView & { orders: OrderUpdate[]; fills: OrderUpdate[]; lastFill: OrderUpdate | null } {
  const { botId, fillLimit = 50, ...rest } = options;
  const [fills, setFills] = useState<OrderUpdate[]>([]);
  const state = useChannel<"order-updates", OrderUpdate>("order-updates", {
    ...scoped(forBot(rest, botId)),
    initial: initialOrders,
    onEvent: (event) => {
      const order = event.data;
      if (event.event === "order_filled" && order !== null) {
        setFills((previous) => [order, ...previous].slice(0, Math.max(fillLimit, 0)));
      }
      rest.onEvent?.(event);
    },
  });
  return view(state, { orders: state.records, fills, lastFill: fills[0] ?? null });
}

export type LogHookOptions = HookOptions<ActivityLog> & {
  /** Only this bot's lines (adds `bot_id` to the filter). */
  botId?: number | undefined;
};

/** New activity-log lines (channel `activity-logs`, event `log_created`), newest first (200 kept). */
export function useActivityLogUpdates(
  initialLogs: readonly ActivityLog[] = NONE,
  options: LogHookOptions = {},
): RealtimeView & { logs: ActivityLog[]; latest: ActivityLog | null } {
  const { botId, ...rest } = options;
  const state = useChannel<"activity-logs", ActivityLog>("activity-logs", {
    order: "prepend",
    limit: 200,
    ...scoped(forBot(rest, botId)),
    initial: initialLogs,
  });
  return view(state, { logs: state.records, latest: state.records[0] ?? null });
}

/** Each bot's P&L (channel `pnl-updates`), keyed by `bot_id`, and their sum. */
export function usePnLUpdates(
  initial: readonly PnLUpdate[] = NONE,
  options: HookOptions<PnLUpdate> = {},
): RealtimeView & { updates: PnLUpdate[]; pnlByBot: Record<string, number>; totalPnl: number } {
  const state = useChannel<"pnl-updates", PnLUpdate>("pnl-updates", {
    getKey: (update) => update.bot_id,
    ...scoped(options),
    initial,
  });
  const pnlByBot: Record<string, number> = {};
  let totalPnl = 0;
  for (const update of state.records) {
    pnlByBot[String(update.bot_id)] = update.pnl;
    totalPnl += update.pnl;
  }
  return view(state, { updates: state.records, pnlByBot, totalPnl });
}

function forBot<T>(options: HookOptions<T>, botId: number | undefined): HookOptions<T> {
  if (botId === undefined) return options;
  const { filter, filters, ...rest } = options;
  if (typeof filter === "string" && filter !== "") {
    return { ...rest, filter: `bot_id=eq.${botId},${filter}` };
  }
  const map = filters ?? (typeof filter === "object" ? filter : undefined) ?? {};
  return { ...rest, filters: { ...map, bot_id: botId } };
}
