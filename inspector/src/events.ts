/** The live event list: newest first, payload expandable, seq and latency shown. */

import type { ChangeEvent } from "@realtime-bridge/client";

const KEEP = 300;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** now − the bridge's event timestamp, in ms (null when the timestamp is unreadable). */
export function latencyMs(event: ChangeEvent, now: number = Date.now()): number | null {
  const at = Date.parse(event.timestamp);
  return Number.isNaN(at) ? null : Math.max(0, now - at);
}

function formatLatency(ms: number | null): string {
  if (ms === null) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

export class EventList {
  constructor(private readonly list: HTMLOListElement) {}

  add(event: ChangeEvent, receivedAt: number = Date.now()): void {
    const latency = latencyMs(event, receivedAt);
    const item = element("li", "event");
    item.dataset.seq = String(event.seq);
    item.dataset.operation = event.operation;
    const details = element("details", "");
    const summary = element("summary", "");
    summary.append(
      element("span", "seq", `#${event.seq}`),
      element("span", `op op-${event.operation.toLowerCase()}`, event.operation),
      element("span", "channel", event.channel),
      element("span", "record", event.record_id === null ? "" : `id ${event.record_id}`),
      element("span", "preview", preview(event)),
      element("span", "latency", formatLatency(latency)),
      element("time", "time", new Date(receivedAt).toLocaleTimeString()),
    );
    const payload = element("pre", "payload");
    payload.textContent = JSON.stringify(
      { event: event.event, table: event.table, user_id: event.user_id, data: event.data, old: event.old, timestamp: event.timestamp },
      null,
      2,
    );
    details.append(summary, payload);
    item.append(details);
    this.list.prepend(item);
    while (this.list.children.length > KEEP) this.list.lastElementChild?.remove();
  }

  clear(): void {
    this.list.replaceChildren();
  }
}

/** A few fields of the payload, enough to recognise the row without expanding it. */
function preview(event: ChangeEvent): string {
  const row = (event.data ?? event.old) as Record<string, unknown> | null;
  if (row === null || typeof row !== "object") return "";
  const fields = ["symbol", "status", "current_price", "quantity", "total_value", "user_id"];
  const shown = fields.filter((name) => name in row).slice(0, 4);
  const pairs = (shown.length > 0 ? shown : Object.keys(row).slice(0, 3)).map(
    (name) => `${name}=${String(row[name])}`,
  );
  return pairs.join(" ");
}
