// The official @supabase/supabase-js client against a running realtime-bridge.
//
//   node tests/js/scenario.mjs <bridge url> <anon key> <service key> <vsn 1.0.0|2.0.0>
//
// Driven by tests/test_supabase_js.py over stdio: lines this script prints that
// start with "@@" are JSON requests ({"type":"call", "id", "op": "sql"|"token", ...})
// or the final {"type":"result"}; pytest answers each call with one JSON line on stdin.
// The client code below is what an app written for hosted Supabase does; the only
// instrumentation is a WebSocket subclass that counts text and binary frames.
import { createClient } from '@supabase/supabase-js'
import readline from 'node:readline'

const [url, anonKey, serviceKey, vsn] = process.argv.slice(2)

const pending = new Map()
let nextId = 1
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const answer = JSON.parse(line)
  pending.get(answer.id)?.(answer)
  pending.delete(answer.id)
})

function emit(message) {
  process.stdout.write('@@' + JSON.stringify(message) + '\n')
}

function call(op, fields) {
  const id = nextId++
  return new Promise((resolve) => {
    pending.set(id, resolve)
    emit({ type: 'call', id, op, ...fields })
  })
}

const sql = async (query, ...args) => (await call('sql', { query, args })).rows
const userToken = async (user, ttl = 600) => (await call('token', { user, ttl })).token

async function waitFor(what, predicate, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 15))
  }
}

// Frame counts (binary frames by their kind byte); RB_DEBUG=1 also prints every frame.
const frames = { sentText: 0, sentKinds: [], receivedText: 0, receivedKinds: [] }
const debug = (line) => process.env.RB_DEBUG && process.stderr.write(line + '\n')

class CountingWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols)
    this.addEventListener('message', (event) => {
      debug('RECV ' + (typeof event.data === 'string' ? event.data : '<binary>'))
      if (typeof event.data === 'string') frames.receivedText++
      else frames.receivedKinds.push(new Uint8Array(event.data)[0])
    })
  }

  send(data) {
    debug('SEND ' + (typeof data === 'string' ? data : '<binary>'))
    if (typeof data === 'string') frames.sentText++
    else frames.sentKinds.push(new Uint8Array(data)[0])
    super.send(data)
  }
}

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve(status)
      else if (status !== 'CLOSED') reject(new Error(`${channel.topic}: ${status} ${err ?? ''}`))
    })
  })
}

const realtime = { vsn, transport: CountingWebSocket }
const auth = { persistSession: false, autoRefreshToken: false }

let token = await userToken('u1')
// A signed-in user (third-party auth style: the token comes from a callback).
const alice = createClient(url, anonKey, { accessToken: async () => token, realtime })
// A backend with the service key.
const backend = createClient(url, serviceKey, { auth, realtime })

const result = { vsn }
const room = `room-${vsn}-${process.pid}`
const symbol = `JS${vsn.replace(/\./g, '')}`

// --- join: postgres_changes with a filter, broadcast, presence, system --------------------
const changes = []
const system = []
const aliceHeard = []
const presenceSeen = []
const aliceRoom = alice
  .channel(room, { config: { broadcast: { self: true, ack: true }, presence: { key: 'alice' } } })
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'positions', filter: `symbol=eq.${symbol}` }, (p) => changes.push(p))
  .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'positions', filter: `symbol=eq.${symbol}` }, (p) => changes.push(p))
  .on('postgres_changes', { event: 'DELETE', schema: 'public', table: 'positions', filter: `symbol=eq.${symbol}` }, (p) => changes.push(p))
  .on('broadcast', { event: 'cursor' }, (m) => aliceHeard.push(m))
  .on('system', {}, (m) => system.push(m))

const backendHeard = []
const backendRoom = backend
  .channel(room, { config: { broadcast: { ack: true } } })
  .on('broadcast', { event: 'cursor' }, (m) => backendHeard.push(m))
  .on('presence', { event: 'join' }, ({ key, newPresences }) =>
    presenceSeen.push({ event: 'join', key, online_at: newPresences[0]?.online_at }))
  .on('presence', { event: 'leave' }, ({ key }) => presenceSeen.push({ event: 'leave', key }))

// The snippet from hosted Supabase: typed position updates, scoped to the signed-in user.
const positions = []
const positionUpdates = alice
  .channel('position-updates')
  .on('broadcast', { event: 'position_update' }, (m) => positions.push(m))

// An app subscribes once its session is known: let the client's initial setAuth settle
// (a join sent before it would carry only the anon key, and be refused on position-updates).
await alice.realtime.setAuth()
result.subscribed = await Promise.all([subscribed(aliceRoom), subscribed(backendRoom), subscribed(positionUpdates)])
await waitFor('Subscribed to PostgreSQL', () => system.length > 0)
result.system = system

// --- postgres_changes: INSERT / UPDATE / DELETE through the filter and the row scope -------
const [{ id: rowId }] = await sql(
  `INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price)
   VALUES ('u1', $1, 2, 100, 110) RETURNING id`, symbol)
await sql('UPDATE positions SET current_price = 120 WHERE id = $1', rowId)
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u2', $1, 1, 1)`, symbol)
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', 'OTHER', 1, 1)`)
await sql('DELETE FROM positions WHERE id = $1', rowId)
await waitFor('three changes', () => changes.length >= 3)
await waitFor('four position updates', () => positions.length >= 4)
result.changes = changes
result.positions = positions

// --- broadcast with ack, both directions ---------------------------------------------------
result.aliceSend = await aliceRoom.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, from: 'alice' } })
result.backendSend = await backendRoom.send({ type: 'broadcast', event: 'cursor', payload: { x: 2, from: 'backend' } })
await waitFor('alice hears both', () => aliceHeard.length >= 2)
await waitFor('backend hears alice', () => backendHeard.length >= 1)

// --- REST broadcast: an ephemeral topic, and the plugin channel through the log ------------
await backendRoom.httpSend('cursor', { x: 3, from: 'rest' })
await waitFor('alice hears the REST broadcast', () => aliceHeard.length >= 3)
result.aliceHeard = aliceHeard
result.backendHeard = backendHeard

// --- presence --------------------------------------------------------------------------------
result.track = await aliceRoom.track({ online_at: 'now' })
await waitFor('presence join', () => presenceSeen.some((p) => p.event === 'join'))
result.aliceState = aliceRoom.presenceState()
result.backendState = backendRoom.presenceState()
result.untrack = await aliceRoom.untrack()
await waitFor('presence leave', () => presenceSeen.some((p) => p.event === 'leave'))
result.presence = presenceSeen

// --- token refresh: the channels keep their subscriptions ----------------------------------
token = await userToken('u1', 900)
await alice.realtime.setAuth()
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', $1, 3, 1)`, symbol)
await waitFor('a change after the refresh', () => changes.length >= 4)

// --- leave -----------------------------------------------------------------------------------
result.leave = await aliceRoom.unsubscribe()
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', $1, 4, 1)`, symbol)
await waitFor('the position update after leaving the room', () => positions.length >= 6)
result.changesAfterLeave = changes.length
result.frames = frames

await alice.removeAllChannels()
await backend.removeAllChannels()
emit({ type: 'result', ...result })
process.exit(0)
