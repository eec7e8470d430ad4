// supabase-js subscribing with every filter operator (like, ilike, is, not.) on one channel.
//
//   node tests/js/filters.mjs <bridge url> <anon key> <service key> <vsn> <filters JSON> <rows JSON>
//
// Driven by tests/test_supabase_js.py (see scenario.mjs for the stdio protocol). Each
// filter gets its own postgres_changes binding; a binding without a filter, joined
// last, tells when every insert has arrived (one socket delivers in commit order).
import { createClient } from '@supabase/supabase-js'
import readline from 'node:readline'

const [url, , serviceKey, vsn, filtersJson, rowsJson] = process.argv.slice(2)
const filters = JSON.parse(filtersJson)

const pending = new Map()
let nextId = 1
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const answer = JSON.parse(line)
  pending.get(answer.id)?.(answer)
  pending.delete(answer.id)
})
const emit = (message) => process.stdout.write('@@' + JSON.stringify(message) + '\n')
function call(op, fields) {
  const id = nextId++
  return new Promise((resolve) => {
    pending.set(id, resolve)
    emit({ type: 'call', id, op, ...fields })
  })
}
const sql = async (query, ...args) => (await call('sql', { query, args })).rows

async function waitFor(what, predicate, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 15))
  }
}

const backend = createClient(url, serviceKey, {
  auth: { persistSession: false, autoRefreshToken: false },
  realtime: { vsn },
})
const received = Object.fromEntries(filters.map((f) => [f, []]))
const all = []
const system = []
let channel = backend.channel(`filters-${vsn}-${process.pid}`)
for (const filter of filters) {
  channel = channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'filter_compat', filter },
    (p) => received[filter].push(p))
}
channel = channel
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'filter_compat' }, (p) => all.push(p))
  .on('system', {}, (m) => system.push(m))
const status = await new Promise((resolve) => channel.subscribe((s, err) => {
  if (s !== 'CLOSED') resolve(err ? `${s}: ${err.message}` : s)
}))
await waitFor('Subscribed to PostgreSQL', () => system.length > 0)

// One transaction inserting every row (so they share one commit_timestamp).
await sql(
  `INSERT INTO filter_compat (name, note, qty, flag)
   SELECT name, note, qty, flag FROM jsonb_to_recordset($1::jsonb)
     AS r(name text, note text, qty integer, flag boolean)`,
  rowsJson,
)
const expected = JSON.parse(rowsJson).length
await waitFor('every insert', () => all.length >= expected)
emit({
  type: 'result',
  status,
  system: system.map((m) => m.status),
  received: Object.fromEntries(filters.map((f) => [f, received[f].map((p) => p.new.id)])),
  all: all.map((p) => ({ id: p.new.id, commit_timestamp: p.commit_timestamp, eventType: p.eventType })),
})
process.exit(0)
