// node-oidc-provider configured like the idp, for bench/run.py to compare against.
//
// usage: node provider.mjs --port PORT --issuer URL --jwks FILE
//   (or BENCH_PORT, BENCH_ISSUER, BENCH_JWKS in the environment)
//
// FILE is a private JWKS: the idp keyring's published keys with kid/alg/use, the active key of each algorithm
// first, because node-oidc-provider signs with the first key of an algorithm and only publishes the rest.
// Listens on 127.0.0.1 only, logs no requests, and prints one "ready" line on stdout once it listens.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.BENCH_PORT },
    issuer: { type: 'string', default: process.env.BENCH_ISSUER },
    jwks: { type: 'string', default: process.env.BENCH_JWKS },
  },
});

if (!values.port || !values.issuer || !values.jwks) {
  console.error('usage: node provider.mjs --port PORT --issuer URL --jwks FILE');
  process.exit(2);
}

const port = Number.parseInt(values.port, 10);
const { issuer } = values;
const jwks = JSON.parse(readFileSync(values.jwks, 'utf8'));

// In-memory storage, like the default adapter but without its development-only warning; the benchmarked
// endpoints (discovery, JWKS) never touch it.
class MemoryAdapter {
  static store = new Map();

  constructor(name) {
    this.name = name;
  }

  key(id) {
    return `${this.name}:${id}`;
  }

  async upsert(id, payload) {
    MemoryAdapter.store.set(this.key(id), payload);
  }

  async find(id) {
    return MemoryAdapter.store.get(this.key(id));
  }

  async findByUserCode() {
    return undefined;
  }

  async findByUid(uid) {
    for (const payload of MemoryAdapter.store.values()) {
      if (payload.uid === uid) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const payload = MemoryAdapter.store.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    MemoryAdapter.store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, payload] of MemoryAdapter.store) {
      if (payload.grantId === grantId) MemoryAdapter.store.delete(key);
    }
  }
}

// The idp's planned feature set (DESIGN.md sections 2, 6, 10), so both discovery documents describe a similar
// provider: code flow with PKCE, refresh tokens, userinfo, introspection, revocation, RP-initiated and
// back-channel logout, pairwise subjects, acr values.
const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  jwks,
  clients: [
    {
      client_id: 'bench',
      client_secret: randomBytes(32).toString('base64url'),
      redirect_uris: ['http://localhost/callback'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      // RS256 is the OIDC default for ID tokens (DESIGN.md section 5).
      id_token_signed_response_alg: 'RS256',
    },
  ],
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  acrValues: ['phrh', 'phr', `${issuer}/acr/aal2`, `${issuer}/acr/aal1`],
  claims: {
    openid: ['sub'],
    profile: ['name', 'birthdate'],
    phone: ['phone_number', 'phone_number_verified'],
  },
  subjectTypes: ['public', 'pairwise'],
  pairwiseIdentifier: async (ctx, accountId, client) => `${accountId}:${client.sectorIdentifier}`,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 300,
    RefreshToken: 14 * 86400,
  },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
});

provider.on('server_error', (ctx, err) => {
  console.error('server_error', err);
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer} on 127.0.0.1:${port}`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
