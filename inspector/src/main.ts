/**
 * The inspector: the bridge at a glance (health, clients, this page's
 * transport) and a live view of one channel, through the TypeScript client.
 */

import "./style.css";

import {
  createClient,
  type ChangeEvent,
  type RealtimeClient,
  type Status,
  type SubscribeOptions,
} from "@realtime-bridge/client";

import { fetchHealth, fetchIndex, fetchStats } from "./bridge.js";
import { RateChart } from "./chart.js";
import { readConfig, storeKey } from "./config.js";
import { EventList } from "./events.js";

const STATS_EVERY_MS = 2000;

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`the page has no #${id}`);
  return node as T;
}

const ui = {
  bridgeStatus: byId("bridge-status"),
  headSeq: byId("head-seq"),
  lag: byId("lag"),
  clients: byId("clients"),
  mode: byId("mode"),
  keyButton: byId<HTMLButtonElement>("key-button"),
  keyForm: byId<HTMLFormElement>("key-form"),
  keyInput: byId<HTMLInputElement>("key-input"),
  keyForget: byId<HTMLButtonElement>("key-forget"),
  notice: byId("notice"),
  channelRows: byId<HTMLTableSectionElement>("channel-rows"),
  channelList: byId<HTMLDataListElement>("channel-list"),
  watchForm: byId<HTMLFormElement>("watch-form"),
  channel: byId<HTMLInputElement>("channel"),
  filter: byId<HTMLInputElement>("filter"),
  since: byId<HTMLInputElement>("since"),
  stop: byId<HTMLButtonElement>("stop"),
  clear: byId<HTMLButtonElement>("clear"),
  watchStatus: byId("watch-status"),
  events: new EventList(byId<HTMLOListElement>("events")),
  chart: new RateChart(byId<HTMLCanvasElement>("rate-chart"), byId("rate")),
};

const config = readConfig();
let key = config.key;
let client: RealtimeClient | null = null;
let watched: { channel: string; filter: string; since: string } | null = null;
let stopWatching: (() => void) | null = null;
let received = 0;

function notice(text: string | null): void {
  ui.notice.hidden = text === null;
  ui.notice.textContent = text ?? "";
}

function showMode(status: Status | "no key"): void {
  ui.mode.textContent = status;
  ui.mode.dataset.mode = status;
}

function watchStatus(text: string, state: "idle" | "watching" | "refused"): void {
  ui.watchStatus.textContent = text;
  ui.watchStatus.dataset.state = state;
}

/** A new client for the current key; what was watched is watched again. */
function connect(): void {
  stopWatching?.();
  stopWatching = null;
  client?.close();
  client = null;
  if (!key) {
    showMode("no key");
    ui.keyForm.hidden = false;
    notice("Enter a key to watch channels (the service key also shows the bridge's stats).");
    return;
  }
  const current = createClient({ url: config.url, apiKey: key, ...config.timings });
  client = current;
  current.onStatusChange(showMode);
  current.on("error", (error) => notice(`${error.code}: ${error.message}`));
  current.connect(); // show the transport at once, not only after the first Watch
  showMode(current.status);
  if (watched) watch(watched.channel, watched.filter, watched.since);
}

function watch(channel: string, filter: string, since: string): void {
  stopWatching?.();
  stopWatching = null;
  watched = { channel, filter, since };
  if (client === null) {
    watchStatus("Enter a key first.", "refused");
    return;
  }
  const options: SubscribeOptions = {
    onError: (error) => watchStatus(`${channel}: ${error.code}: ${error.message}`, "refused"),
    onResync: (info) =>
      notice(`${info.channel}: the log no longer reaches back that far (earliest seq ${info.earliestSeq ?? "?"})`),
  };
  if (filter) options.filter = filter;
  if (since !== "" && Number.isInteger(Number(since))) options.since = Number(since);
  const label = `${channel}${filter ? ` where ${filter}` : ""}`;
  watchStatus(`Watching ${label}: waiting for events…`, "watching");
  const onEvent = (event: ChangeEvent) => {
    received += 1;
    ui.events.add(event);
    ui.chart.record();
    watchStatus(`Watching ${label}: ${received} event${received === 1 ? "" : "s"}, last seq ${event.seq}`, "watching");
  };
  stopWatching = client.subscribe(channel, options, onEvent);
}

function showChannels(channels: readonly string[], subscriptions: Record<string, number> | null): void {
  const names = [...new Set([...channels, ...Object.keys(subscriptions ?? {})])].sort();
  ui.channelRows.replaceChildren(
    ...names.map((name) => {
      const row = document.createElement("tr");
      row.dataset.channel = name;
      const cell = document.createElement("td");
      const pick = document.createElement("button");
      pick.type = "button";
      pick.className = "link";
      pick.textContent = name;
      pick.addEventListener("click", () => {
        ui.channel.value = name;
        ui.filter.focus();
      });
      cell.append(pick);
      const count = document.createElement("td");
      count.className = "count";
      count.textContent = subscriptions === null ? "–" : String(subscriptions[name] ?? 0);
      row.append(cell, count);
      return row;
    }),
  );
  ui.channelList.replaceChildren(
    ...names.map((name) => Object.assign(document.createElement("option"), { value: name })),
  );
}

async function refresh(): Promise<void> {
  const [health, stats] = await Promise.all([
    fetchHealth(config.url, key),
    key ? fetchStats(config.url, key) : Promise.resolve(null),
  ]);
  if (health.ok) {
    ui.bridgeStatus.textContent = `${health.body.status} · ${health.body.mode}`;
    ui.bridgeStatus.dataset.status = health.body.status;
    ui.headSeq.textContent = String(health.body.last_seq);
    ui.lag.textContent = health.body.lag_ms === null ? "–" : `${health.body.lag_ms.toFixed(1)} ms`;
  } else {
    ui.bridgeStatus.textContent = "unreachable";
    ui.bridgeStatus.dataset.status = "unreachable";
  }
  if (stats?.ok) {
    ui.clients.textContent = String(stats.body.connections);
    showChannels(stats.body.channels, stats.body.subscriptions);
    if (ui.notice.dataset.kind === "stats") notice(null);
  } else {
    ui.clients.textContent = "–";
    const index = await fetchIndex(config.url);
    showChannels(index.ok ? index.body.channels : [], null);
    if (stats && !stats.ok && stats.status !== 0) {
      notice(`Stats: ${stats.message} (they need the service key).`);
      ui.notice.dataset.kind = "stats";
    }
  }
}

ui.keyButton.addEventListener("click", () => {
  ui.keyForm.hidden = !ui.keyForm.hidden;
  if (!ui.keyForm.hidden) ui.keyInput.focus();
});
ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  key = ui.keyInput.value.trim() || null;
  storeKey(key);
  ui.keyInput.value = "";
  ui.keyForm.hidden = key !== null;
  notice(null);
  connect();
  void refresh();
});
ui.keyForget.addEventListener("click", () => {
  storeKey(null);
  key = null;
  connect();
  void refresh();
});
ui.watchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  received = 0;
  ui.events.clear();
  ui.chart.reset();
  watch(ui.channel.value.trim(), ui.filter.value.trim(), ui.since.value.trim());
});
ui.stop.addEventListener("click", () => {
  stopWatching?.();
  stopWatching = null;
  watched = null;
  watchStatus("Stopped.", "idle");
});
ui.clear.addEventListener("click", () => {
  received = 0;
  ui.events.clear();
  ui.chart.reset();
});

if (config.channel) {
  ui.channel.value = config.channel;
  ui.filter.value = config.filter;
  ui.since.value = config.since;
  watched = { channel: config.channel, filter: config.filter, since: config.since };
}
connect();
void refresh();
setInterval(() => void refresh(), STATS_EVERY_MS);
setInterval(() => ui.chart.draw(), 1000);
ui.chart.draw();
