import type { PositionUpdate } from "@realtime-bridge/client";

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const number = new Intl.NumberFormat("en-US", { maximumFractionDigits: 4 });

export const formatMoney = (value: number | null | undefined): string =>
  value === null || value === undefined ? "–" : money.format(value);

export const formatNumber = (value: number | null | undefined): string =>
  value === null || value === undefined ? "–" : number.format(value);

export const formatPct = (value: number | null | undefined): string =>
  value === null || value === undefined ? "–" : `${value >= 0 ? "+" : ""}${value.toFixed(2)}%`;

/** Unrealized P&L at the current price (the stored column may lag a price change). */
export function positionPnl(position: PositionUpdate): number | null {
  if (position.current_price === null) return position.unrealized_pnl;
  return (position.current_price - position.entry_price) * position.quantity;
}

export const sign = (value: number | null | undefined): "up" | "down" | "flat" =>
  value === null || value === undefined || value === 0 ? "flat" : value > 0 ? "up" : "down";

const clock = new Intl.DateTimeFormat("en-GB", { timeStyle: "medium" });

export const formatTime = (value: string | Date | null | undefined): string =>
  value ? clock.format(new Date(value)) : "–";
