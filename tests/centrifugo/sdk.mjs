// The unmodified centrifuge-js SDK (npm `centrifuge` 5.x, in Node with `ws`)
// against the real shardcast binary's Centrifugo endpoint (issue 14):
// connect with a token from getToken, token refresh past exp, subscribe,
// receive, publish, presence; an abrupt disconnect (a proxy between the SDK
// and the server cuts every socket) while 50 publications are made, then
// recovery with zero loss and no duplicate; drain (SIGTERM) → the SDK is
// told 3001 and reconnects to the next process, resubscribing.
//
//   node tests/centrifugo/sdk.mjs [path to the shardcast binary]
//
// Needs `npm install centrifuge@5 ws` in tests/centrifugo (CI does it).
// Loopback only; every wait is bounded; exits non-zero on any failure.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.argv[2] || path.join(ROOT, 'target', 'release', 'shardcast');
const SECRET = 'sdk-test-secret';
const API_KEY = 'sdk-test-key';

const sleep = ms => new Promise(r => setTimeout(r, ms));
async function until(cond, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}
function assert(c, msg) {
  if (!c) throw new Error(`assertion failed: ${msg}`);
}

const b64 = o => Buffer.from(JSON.stringify(o)).toString('base64url');
function mint(sub, ttlSecs) {
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, tenant: 'acme', exp: Math.floor(Date.now() / 1000) + ttlSecs });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

async function freePort() {
  return new Promise(resolve => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

async function startServer(port, admin) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sc-sdk-'));
  const cfg = path.join(dir, 'server.toml');
  writeFileSync(cfg, `[server]\nlisten = "127.0.0.1:${port}"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = "127.0.0.1:${admin}"\n` +
    `[auth]\nrequired = true\nhs256_secrets = ["${SECRET}"]\nleeway_secs = 2\n[centrifugo]\napi_key = "${API_KEY}"\n`);
  const proc = spawn(BIN, ['serve', '--config', cfg], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } });
  await until(() => new Promise(r => {
    const s = net.connect(port, '127.0.0.1', () => { s.end(); r(true); });
    s.on('error', () => r(false));
  }), 10000, 'the server');
  return proc;
}

// A TCP proxy that can cut every connection at once (an abrupt network
// loss: no close frame, no FIN from the server side) and refuse new ones.
function proxy(listenPort, upstream) {
  const socks = new Set();
  let up = upstream, open = true;
  const srv = net.createServer(c => {
    if (!open) return c.destroy();
    const s = net.connect(up, '127.0.0.1');
    socks.add(c); socks.add(s);
    c.pipe(s); s.pipe(c);
    const end = () => { c.destroy(); s.destroy(); socks.delete(c); socks.delete(s); };
    c.on('error', end); s.on('error', end); c.on('close', end); s.on('close', end);
  });
  srv.listen(listenPort, '127.0.0.1');
  return {
    cut() { open = false; for (const s of socks) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy(); socks.clear(); },
    resume() { open = true; },
    upstream(p) { up = p; },
    close() { srv.close(); for (const s of socks) s.destroy(); },
  };
}

async function api(port, method, body) {
  const r = await fetch(`http://127.0.0.1:${port}/api/${method}`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body: JSON.stringify(body),
  });
  assert(r.status === 200, `api ${method} status ${r.status}`);
  const v = await r.json();
  assert(!v.error, `api ${method}: ${JSON.stringify(v)}`);
  return v;
}

async function main() {
  const [p1, a1, p2, a2, pp] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  let server = await startServer(p1, a1);
  const px = proxy(pp, p1);
  let tokens = 0;
  const events = [];
  const c = new Centrifuge(`ws://127.0.0.1:${pp}/connection/websocket`, {
    websocket: WebSocket,
    getToken: async () => { tokens++; return mint('sdk-user', 3); },
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    timeout: 3000,
  });
  c.on('connecting', ctx => events.push(['connecting', ctx.code, ctx.reason]));
  c.on('connected', ctx => events.push(['connected', ctx.client]));
  c.on('disconnected', ctx => events.push(['disconnected', ctx.code, ctx.reason]));
  const seen = [];
  const subscribed = [];
  const sub = c.newSubscription('acme/sdk');
  sub.on('publication', ctx => seen.push([ctx.offset, ctx.data]));
  sub.on('subscribed', ctx => subscribed.push(ctx));
  sub.subscribe();
  c.connect();
  try {
    await sub.ready(5000);
    assert(subscribed[0].recoverable && subscribed[0].positioned, 'recoverable and positioned');
    const epoch = subscribed[0].streamPosition.epoch;

    // Receive what the server API publishes, and publish from the SDK.
    for (let i = 1; i <= 5; i++) await api(p1, 'publish', { channel: 'acme/sdk', data: { i } });
    await sub.publish({ i: 6, from: 'sdk' });
    await until(() => seen.length === 6, 5000, '6 publications');
    assert(JSON.stringify(seen.map(s => s[0])) === '[1,2,3,4,5,6]', `offsets ${JSON.stringify(seen)}`);
    const pres = await sub.presence();
    assert(Object.values(pres.clients).some(m => m.user === 'sdk-user'), `presence ${JSON.stringify(pres)}`);
    const stats = await sub.presenceStats();
    assert(stats.numClients === 1, `stats ${JSON.stringify(stats)}`);

    // Token refresh: exp is 3 s out; stay connected past it.
    await sleep(6000);
    assert(tokens >= 2, `getToken called for the refresh (${tokens} calls)`);
    assert(!events.some(e => e[0] === 'connecting' && e[1] !== 0), `no reconnect across exp: ${JSON.stringify(events)}`);

    // An abrupt disconnect while 50 publications are made, then recovery.
    px.cut();
    await until(() => events.some(e => e[0] === 'connecting' && e[1] !== 0), 5000, 'the SDK to notice');
    for (let i = 7; i <= 56; i++) await api(p1, 'publish', { channel: 'acme/sdk', data: { i } });
    px.resume();
    await until(() => seen.length >= 56, 10000, 'the 50 missed publications');
    await sleep(300);
    const offs = seen.map(s => s[0]);
    assert(offs.length === 56 && offs.every((o, k) => o === k + 1), `zero loss, no duplicate: ${JSON.stringify(offs)}`);
    assert(seen.every(([o, d]) => d.i === o), 'the data of each');
    const rec = subscribed[subscribed.length - 1];
    assert(rec.wasRecovering && rec.recovered, `recovered: ${JSON.stringify(rec)}`);
    assert(rec.streamPosition.epoch === epoch, 'same epoch');

    // Drain: SIGTERM; the SDK is told 3001 and reconnects (to the next
    // process, behind the same address), resubscribing.
    const p2srv = await startServer(p2, a2);
    px.upstream(p2);
    const before = events.length;
    server.kill('SIGTERM');
    await until(() => events.slice(before).some(e => e[0] === 'connecting' && e[1] === 3001), 10000, 'close 3001');
    await until(() => subscribed.length >= 3, 10000, 'the resubscribe');
    server = p2srv;
    const after = subscribed[subscribed.length - 1];
    // In-memory epochs change with the process: the SDK is told the
    // recovery failed (a durable epoch is issue 15's cluster mode).
    assert(after.wasRecovering && !after.recovered, `after restart: ${JSON.stringify(after)}`);
    await api(p2, 'publish', { channel: 'acme/sdk', data: { i: 'after' } });
    await until(() => seen.some(s => s[1].i === 'after'), 5000, 'a publication from the next process');
    console.log(`centrifuge-js ${JSON.stringify({ tokens, publications: seen.length, events: events.length })}: OK`);
  } finally {
    c.disconnect();
    px.close();
    server.kill('SIGKILL');
  }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
