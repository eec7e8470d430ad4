// Hosted Supabase for auth (and everything else), the bridge for realtime only.
//
//   node tests/js/split.mjs <bridge url> <anon key> <service key>
//
// The "hosted" URL below is never contacted: supabase.auth is simply not used here;
// the point is that supabase.channel() talks to the bridge with the session's token.
import { createClient, RealtimeClient } from '@supabase/supabase-js'
import readline from 'node:readline'

const [bridgeUrl, anonKey] = process.argv.slice(2)
const pending = new Map()
let nextId = 1
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const answer = JSON.parse(line)
  pending.get(answer.id)?.(answer)
  pending.delete(answer.id)
})
const emit = (message) => process.stdout.write('@@' + JSON.stringify(message) + '\n')
const call = (op, fields) =>
  new Promise((resolve) => {
    const id = nextId++
    pending.set(id, resolve)
    emit({ type: 'call', id, op, ...fields })
  })
const sql = async (query, ...args) => (await call('sql', { query, args })).rows
let sessionToken = (await call('token', { user: 'u1', ttl: 600 })).token

// --- what the app writes (docs/clients.md, "Keep Supabase Auth") ---------------------
const supabase = createClient('https://project-ref.supabase.co', anonKey, {
  auth: { persistSession: false, autoRefreshToken: false },
})
supabase.realtime = new RealtimeClient(`${bridgeUrl.replace(/^http/, 'ws')}/realtime/v1`, {
  params: { apikey: anonKey },
  // In the app: (await supabase.auth.getSession()).data.session?.access_token ?? null
  accessToken: async () => sessionToken,
})
// ---------------------------------------------------------------------------------------
await supabase.realtime.setAuth() // as scenario.mjs: subscribe once the session's token is set

const updates = []
const states = []
supabase
  .channel('position-updates')
  .on('broadcast', { event: 'position_update' }, (m) => updates.push(m.payload.symbol))
  .subscribe((status) => states.push(status))
const deadline = Date.now() + 8000
while (!states.includes('SUBSCRIBED') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 15))
await sql(`INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', 'SPLIT', 1, 1)`)
while (updates.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 15))
emit({ type: 'result', states, updates, endpoint: supabase.realtime.endpointURL() })
process.exit(0)
