// ID-token signing speed with jose (what node-oidc-provider signs with), for bench/run.py.
//
// usage: node sign.mjs --jwks FILE [--seconds S] [--alg ES256 --alg RS256]
//
// Signs ID-token-like claims with the first key of each algorithm in FILE (a private JWKS) for S seconds
// after a short warm-up, one token at a time as a provider does, and prints one JSON object:
//   {"ES256": {"count": N, "seconds": T, "per_second": R}, "RS256": {...}, "runtime": "node v20..."}

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { importJWK, SignJWT } from 'jose';

const { values } = parseArgs({
  options: {
    jwks: { type: 'string', default: process.env.BENCH_JWKS },
    seconds: { type: 'string', default: '2' },
    alg: { type: 'string', multiple: true, default: ['ES256', 'RS256'] },
  },
});

if (!values.jwks) {
  console.error('usage: node sign.mjs --jwks FILE [--seconds S] [--alg ALG ...]');
  process.exit(2);
}

const budget = Number.parseFloat(values.seconds);
const WARMUP_SECONDS = Math.min(0.3, budget / 4);
const BATCH = 20;
const { keys } = JSON.parse(readFileSync(values.jwks, 'utf8'));

// The same claims as bench/run.py signs on the idp side (docs/integration.md section 7).
function claims() {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: 'http://localhost:8000',
    sub: 'Qm9iIHRoZSBiZW5jaG1hcmsgcmVzaWRlbnQgc3ViamVjdA',
    aud: 'bench-client',
    exp: now + 300,
    iat: now,
    auth_time: now - 30,
    nonce: 'n-0S6_WzA2Mj',
    acr: 'phr',
    amr: ['swk', 'user', 'mfa'],
    sid: '9b6a4b8f-3e1c-4d0b-a1f2-6c0d1e2f3a4b',
  };
}

async function signOne(key, jwk) {
  return new SignJWT(claims()).setProtectedHeader({ alg: jwk.alg, kid: jwk.kid, typ: 'JWT' }).sign(key);
}

async function run(seconds, key, jwk) {
  let count = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  let now = started;
  while (now < deadline) {
    for (let i = 0; i < BATCH; i += 1) {
      await signOne(key, jwk);
    }
    count += BATCH;
    now = performance.now();
  }
  return { count, seconds: (now - started) / 1000 };
}

const result = { runtime: `node ${process.version}` };
for (const alg of values.alg) {
  const jwk = keys.find((candidate) => candidate.alg === alg);
  if (!jwk) {
    console.error(`no ${alg} key in ${values.jwks}`);
    process.exit(1);
  }
  const key = await importJWK(jwk, alg);
  await run(WARMUP_SECONDS, key, jwk);
  const { count, seconds } = await run(budget, key, jwk);
  result[alg] = { count, seconds: Number(seconds.toFixed(3)), per_second: Number((count / seconds).toFixed(1)) };
}
console.log(JSON.stringify(result));
