// node-oidc-provider configured like the idp, for bench/run.py to compare against.
//
// usage: node provider.mjs --port PORT --issuer URL --jwks FILE [--mint]
//   (or BENCH_PORT, BENCH_ISSUER, BENCH_JWKS in the environment; BENCH_CLIENT_SECRET is the client's secret)
//
// FILE is a private JWKS: the idp keyring's published keys with kid/alg/use, the active key of each algorithm
// first, because node-oidc-provider signs with the first key of an algorithm and only publishes the rest.
// Listens on 127.0.0.1 only, logs no requests, and prints one "ready" line on stdout once it listens.
//
// --mint adds `POST /bench/mint?kind=KIND&count=N` for bench/run.py: N single-use authorization codes or refresh
// tokens (or access tokens for UserInfo and introspection, or signed-in browsers' session cookies for /auth) saved
// through the provider's own models, as its authorization and token endpoints would have saved them, returned as
// {"values": [...]}. A benchmark helper only.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.BENCH_PORT },
    issuer: { type: 'string', default: process.env.BENCH_ISSUER },
    jwks: { type: 'string', default: process.env.BENCH_JWKS },
    mint: { type: 'boolean', default: false },
  },
});

if (!values.port || !values.issuer || !values.jwks) {
  console.error('usage: node provider.mjs --port PORT --issuer URL --jwks FILE [--mint]');
  process.exit(2);
}

const port = Number.parseInt(values.port, 10);
const { issuer } = values;
const jwks = JSON.parse(readFileSync(values.jwks, 'utf8'));

// In-memory storage, like the default adapter but without its development-only warning. Codes, grants, refresh
// tokens and opaque access tokens live here: the idp keeps them in SQLite or PostgreSQL, so node's figures for the
// token, UserInfo and introspection cases are those of a provider with a free, in-process store.
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

// The bench client, like the one bench/run.py registers in the idp: confidential, client_secret_basic, the code
// flow with refresh tokens and client credentials, pairwise subjects, RS256 ID tokens.
const CLIENT_ID = 'bench';
const REDIRECT_URI = 'http://localhost/callback';
const SCOPE = 'openid profile phone offline_access';
// The idp's access tokens are RFC 9068 JWTs signed with ES256 whose audience is the client itself. node-oidc-provider
// issues JWT access tokens only for a resource server, so every token request defaults to this one, whose audience
// is the requesting client and whose scopes are the client's.
const RESOURCE = 'urn:idp-bench:client-api';
// How long a signed-in browser's session lives (node's default).
const SESSION_TTL = 14 * 86400;
// The resident of the bench: the claims the idp releases for the scopes above.
const ACCOUNT_ID = 'bench-resident';
const ACCOUNT_CLAIMS = {
  name: '김경기',
  birthdate: '1985-03-14',
  phone_number: '+821000000001',
  phone_number_verified: true,
};

// The idp's planned feature set (docs/integration.md: flows, tokens and assurance levels), so both discovery documents describe a similar
// provider: code flow with PKCE, refresh tokens (rotated at every use, as the idp does), client credentials,
// userinfo, introspection, revocation, RP-initiated and back-channel logout, pairwise subjects, acr values.
const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  jwks,
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: process.env.BENCH_CLIENT_SECRET || randomBytes(32).toString('base64url'),
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      scope: SCOPE,
      subject_type: 'pairwise',
      // RS256 is the OIDC default for ID tokens (docs/admin.md section 4).
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
  scopes: ['openid', 'offline_access', 'profile', 'phone'],
  subjectTypes: ['public', 'pairwise'],
  pairwiseIdentifier: async (ctx, accountId, client) => `${accountId}:${client.sectorIdentifier}`,
  pkce: { required: () => true },
  // The idp rotates a refresh token at every use (RFC 9700 §4.14.2); node rotates confidential clients' tokens
  // only late in their life unless told to.
  rotateRefreshToken: true,
  features: {
    // Its own sign-in page (GET /interaction/:uid: the waiting interaction and its client looked up, a page
    // rendered), measured beside the idp's /login by the signin_page case. Only pages: nothing signs in through it.
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Like the idp: a client introspects its own tokens only.
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource, client) => {
        if (resource !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: SCOPE,
          audience: client.clientId,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 14 * 86400,
    IdToken: 300,
    Interaction: 3600,
    RefreshToken: 14 * 86400,
    Session: SESSION_TTL,
  },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, ...(sub === ACCOUNT_ID ? ACCOUNT_CLAIMS : {}) }),
  }),
});

// -- minting single-use artifacts for the benchmark (only with --mint) ------------------------------------------

const MAX_MINT = 500_000;
const CODE_VERIFIER = process.env.BENCH_CODE_VERIFIER || 'bench-code-verifier-0123456789-abcdefghijklmnopqrstuvwxyz';
const CODE_CHALLENGE = createHash('sha256').update(CODE_VERIFIER).digest('base64url');
const SID = 'bench-session';
let grantId;

// One grant of the resident to the client, as a consent would have recorded it (again if a reused code or
// refresh token revoked it).
async function benchGrant() {
  if (!grantId || !(await provider.Grant.find(grantId))) {
    const grant = new provider.Grant({ accountId: ACCOUNT_ID, clientId: CLIENT_ID });
    grant.addOIDCScope(SCOPE);
    grant.addResourceScope(RESOURCE, SCOPE);
    grantId = await grant.save();
  }
  return grantId;
}

// What the authorization endpoint would save for a resident who signed in by carrier SMS 30 s ago.
function authentication() {
  return {
    accountId: ACCOUNT_ID,
    acr: `${issuer}/acr/aal1`,
    amr: ['sms', 'mca'],
    authTime: Math.floor(Date.now() / 1000) - 30,
    sid: SID,
  };
}

const MINTERS = {
  async code(client, grant) {
    return new provider.AuthorizationCode({
      ...authentication(),
      client,
      grantId: grant,
      scope: SCOPE,
      resource: RESOURCE,
      redirectUri: REDIRECT_URI,
      nonce: randomBytes(12).toString('base64url'),
      codeChallenge: CODE_CHALLENGE,
      codeChallengeMethod: 'S256',
    }).save();
  },
  async refresh_token(client, grant) {
    return new provider.RefreshToken({
      ...authentication(),
      client,
      grantId: grant,
      gty: 'authorization_code',
      scope: SCOPE,
      resource: RESOURCE,
      rotations: 0,
    }).save();
  },
  // Opaque and without an audience: the only kind node-oidc-provider accepts at UserInfo and can introspect
  // (its JWT access tokens are not stored).
  async access_token(client, grant) {
    const { accountId, sid } = authentication();
    return new provider.AccessToken({
      accountId, client, grantId: grant, gty: 'authorization_code', scope: SCOPE, sid,
    }).save();
  },
  // The Cookie header of a browser the resident signed in on (carrier SMS, 30 s ago), whose session holds the
  // grant to the client (what the default loadExistingGrant finds): /auth answers it with a code.
  async login_cookie(client, grant, ctx) {
    const { accountId, acr, amr, authTime } = authentication();
    const session = new provider.Session({
      accountId,
      acr,
      amr,
      loginTs: authTime,
      authorizations: { [CLIENT_ID]: { sid: randomBytes(16).toString('base64url'), grantId: grant } },
    });
    await session.save(SESSION_TTL);
    // Set as the provider sets it (signed with the cookie keys), then read back off this response.
    ctx.cookies.set(provider.cookieName('session'), session.id, { httpOnly: true, sameSite: 'lax' });
    const cookie = [ctx.response.get('Set-Cookie')].flat().map((line) => line.split(';')[0]).join('; ');
    ctx.remove('Set-Cookie');
    return cookie;
  },
};

if (values.mint) {
  provider.use(async (ctx, next) => {
    if (ctx.path !== '/bench/mint') return next();
    if (ctx.method !== 'POST') {
      ctx.status = 405;
      return undefined;
    }
    const kind = ctx.query.kind;
    const count = Number.parseInt(ctx.query.count, 10);
    if (!Object.hasOwn(MINTERS, kind) || !(count >= 1 && count <= MAX_MINT)) {
      ctx.status = 400;
      ctx.body = { error: `kind must be one of ${Object.keys(MINTERS).join(', ')}, count 1 to ${MAX_MINT}` };
      return undefined;
    }
    const client = await provider.Client.find(CLIENT_ID);
    const grant = await benchGrant();
    const minted = new Array(count);
    for (let i = 0; i < count; i += 1) {
      minted[i] = await MINTERS[kind](client, grant, ctx); // eslint-disable-line no-await-in-loop
    }
    ctx.body = { values: minted, code_verifier: CODE_VERIFIER };
    return undefined;
  });
}

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
