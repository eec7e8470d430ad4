// supabase-js on private channels, REST sends, replay and token expiry against the bridge.
//
//   node tests/js/private.mjs <bridge url> <anon key> <service key> <vsn> <user A> <user B>
//
// Driven by tests/test_supabase_js.py like scenario.mjs (same "@@" stdio calls). The
// database has Supabase's documented policy: each user reads and writes 'user:<auth.uid()>'.
import { createClient } from '@supabase/supabase-js'
import readline from 'node:readline'

const [url, anonKey, serviceKey, vsn, userA, userB] = process.argv.slice(2)

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
const userToken = async (user, ttl = 600) => (await call('token', { user, ttl })).token
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
async function waitFor(what, predicate, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(15)
  }
}

// Every status a channel reports, with the error text.
function watch(channel) {
  const states = []
  channel.subscribe((status, err) => states.push(err ? `${status}: ${err.message}` : status))
  return states
}

const realtime = { vsn }
const auth = { persistSession: false, autoRefreshToken: false }
const result = { vsn }

let tokenA = await userToken(userA)
const alice = createClient(url, anonKey, { accessToken: async () => tokenA, realtime })
const backend = createClient(url, serviceKey, { auth, realtime })
await alice.realtime.setAuth()

// --- SELECT policy: the own topic joins, another user's is refused, not retried ------------
const heard = []
const own = alice
  .channel(`user:${userA}`, { config: { private: true, broadcast: { ack: true } } })
  .on('broadcast', { event: '*' }, (m) => heard.push(m))
const ownStates = watch(own)
await waitFor('own topic', () => ownStates.length > 0)
const other = alice.channel(`user:${userB}`, { config: { private: true } })
const otherStates = watch(other)
await waitFor('refusal', () => otherStates.length >= 2)
await sleep(2500) // past supabase-js's first rejoin delays: no rejoin happens
result.ownStates = [...ownStates]
result.otherStates = otherStates

// --- INSERT policy: send over the socket, and REST (httpSend) ----------------------------
const backendHeard = []
const backendOwn = backend
  .channel(`user:${userA}`, { config: { private: true } })
  .on('broadcast', { event: '*' }, (m) => backendHeard.push(m))
const backendStates = watch(backendOwn)
await waitFor('backend joined', () => backendStates.length > 0)
result.send = await own.send({ type: 'broadcast', event: 'n', payload: { from: 'ws' } })
result.httpSend = await own.httpSend('n', { from: 'http' })
await waitFor('backend hears alice twice', () => backendHeard.length >= 2)
await backendOwn.send({ type: 'broadcast', event: 'n', payload: { from: 'backend' } })
await waitFor('alice hears the backend', () => heard.length >= 1)
// httpSend to another user's private topic: accepted (202) and skipped, as on Supabase.
result.httpOther = await other.httpSend('n', { from: 'intruder' })
// send() before subscribing falls back to REST; the anon key may send on public topics.
const lobbyHeard = []
const lobby = backend.channel('lobby').on('broadcast', { event: '*' }, (m) => lobbyHeard.push(m))
const lobbyStates = watch(lobby)
await waitFor('lobby', () => lobbyStates.length > 0)
const visitor = createClient(url, anonKey, { auth, realtime })
result.restFallback = await visitor.channel('lobby').send({ type: 'broadcast', event: 'hi', payload: { n: 1 } })
await waitFor('lobby hears the visitor', () => lobbyHeard.length >= 1)
await sleep(300)
result.backendHeard = backendHeard.map((m) => m.payload.from)
result.heard = heard.map((m) => m.payload.from)

// --- a new token that may not read the topic: the channel is closed ----------------------
tokenA = await userToken(userB)
await alice.realtime.setAuth()
await waitFor('own topic closed', () => ownStates.includes('CLOSED'))
result.ownAfterRefresh = ownStates.slice(1)

// --- replay from the log: private plugin channel, since + limit, beyond Supabase's 25 -----
const since = Date.now() - 1
for (let i = 0; i < 30; i++) {
  await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, $2, 1, 1)`, userA, `R${i}`)
}
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, 'NOT-MINE', 1, 1)`, userB)
tokenA = await userToken(userA)
const replayed = { limited: [], all: [] }
for (const [name, replay] of [['limited', { since, limit: 2 }], ['all', { since }]]) {
  const client = createClient(url, anonKey, { accessToken: async () => tokenA, realtime })
  await client.realtime.setAuth()
  const feed = client
    .channel('position-updates', { config: { private: true, broadcast: { replay } } })
    .on('broadcast', { event: 'position_update' }, (m) => replayed[name].push(m))
  watch(feed)
}
await waitFor('replays', () => replayed.limited.length >= 2 && replayed.all.length >= 30)
await sleep(300)
result.replayLimited = replayed.limited.map((m) => [m.payload.symbol, m.meta.replayed])
result.replayAll = replayed.all.map((m) => m.payload.symbol)

// --- token expiry: closed like Supabase, and a fresh join resumes what was missed ---------
let tokenC = await userToken(userA, 2)
const carol = createClient(url, anonKey, { accessToken: async () => tokenC, realtime })
await carol.realtime.setAuth()
const changes = []
const system = []
const feedOf = () =>
  carol
    .channel('mine')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'positions' }, (p) => changes.push(p.new.symbol))
    .on('system', {}, (m) => system.push(m))
const carolStates = watch(feedOf())
await waitFor('carol subscribed', () => carolStates.includes('SUBSCRIBED'))
await waitFor('postgres_changes ready', () => system.length > 0)
await waitFor('expiry closes the channel', () => carolStates.includes('CLOSED'), 8000)
result.expirySystem = system.filter((m) => m.extension === 'system').map((m) => m.message)
for (let i = 0; i < 3; i++) {
  await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, $2, 1, 1)`, userA, `MISSED${i}`)
}
await sleep(2500) // no rejoin with the expired token
result.carolStates = [...carolStates]
tokenC = await userToken(userA)
await carol.realtime.setAuth()
const again = watch(feedOf())
await waitFor('carol resubscribed', () => again.includes('SUBSCRIBED'))
await waitFor('the missed rows', () => changes.length >= 3)
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, 'LIVE', 1, 1)`, userA)
await waitFor('live', () => changes.length >= 4)
result.changes = changes

emit({ type: 'result', ...result })
process.exit(0)
