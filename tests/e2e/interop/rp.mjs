// A relying party built on openid-client (v6, OpenID Certified), driven by tests/e2e/test_interop.py.
//
//   RP_CLIENT_SECRET=S node rp.mjs --issuer=URL --client-id=ID --auth-method=M --redirect-uri=URI [--scope=S]
//
// The secret comes from the environment (absent for a public client, --auth-method=none).
// It speaks JSON lines on stdout and reads one line on stdin:
//   1. discovery, then an authorization URL with PKCE S256, state and nonce:   {"step": "authorize", ...}
//   2. stdin: the URL the IdP redirected the resident's browser to (the callback; never contacted)
//   3. the code grant (state, RFC 9207 iss, nonce, ID token signature and claims checked by openid-client),
//      UserInfo, introspection, the refresh grant, revocation, and what the IdP says afterwards:
//      {"step": "done", ...}
// Any failure prints {"step": "error", "error": {...}} with openid-client's own name, code and message, exit 1.

import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import * as client from "openid-client";

const { values: args } = parseArgs({
  options: {
    issuer: { type: "string" },
    "client-id": { type: "string" },
    "auth-method": { type: "string", default: "client_secret_basic" },
    "redirect-uri": { type: "string" },
    scope: { type: "string", default: "openid profile phone offline_access" },
    "post-logout-redirect-uri": { type: "string" },
  },
});

for (const name of ["issuer", "client-id", "redirect-uri"]) {
  if (!args[name]) throw new Error(`--${name}= is required`);
}

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function describe(error) {
  const described = { name: error?.name, message: error?.message };
  for (const key of ["code", "error", "error_description", "status"]) {
    if (error?.[key] !== undefined) described[key] = error[key];
  }
  if (error?.cause !== undefined) {
    described.cause = error.cause instanceof Error ? describe(error.cause) : error.cause;
  }
  return described;
}

function clientAuth(method, secret) {
  switch (method) {
    case "client_secret_basic":
      return client.ClientSecretBasic(secret);
    case "client_secret_post":
      return client.ClientSecretPost(secret);
    case "none":
      return client.None();
    default:
      throw new Error(`unknown --auth-method ${method}`);
  }
}

async function readLine() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    lines.close();
    return line.trim();
  }
  throw new Error("stdin closed before the callback URL arrived");
}

// What a call is refused with, as openid-client reports it (the IdP's error code for server answers).
async function refusal(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return describe(error);
  }
}

async function main() {
  const secret = process.env.RP_CLIENT_SECRET;
  const method = args["auth-method"];
  const config = await client.discovery(
    new URL(args.issuer),
    args["client-id"],
    secret === undefined ? undefined : { client_secret: secret },
    clientAuth(method, secret),
    // The IdP serves plain http://localhost in the tests; in production the issuer is https.
    { execute: [client.allowInsecureRequests] },
  );
  // Verify the ID token's signature against the IdP's JWKS as well (openid-client otherwise trusts the
  // token endpoint's TLS for ID tokens it receives there).
  client.enableNonRepudiationChecks(config);

  const codeVerifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const authorizationUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: args["redirect-uri"],
    scope: args.scope,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: "S256",
    state,
    nonce,
  });
  emit({
    step: "authorize",
    authorization_url: authorizationUrl.href,
    state,
    nonce,
    server_metadata: config.serverMetadata(),
  });

  const callback = new URL(await readLine());
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const idClaims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, idClaims.sub);
  const result = {
    step: "done",
    token_response: { ...tokens },
    id_token_claims: idClaims,
    userinfo,
  };
  const confidential = method !== "none";
  if (confidential) {
    result.introspection = await client.tokenIntrospection(config, tokens.access_token);
  }

  let current = tokens;
  if (tokens.refresh_token) {
    const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
    result.refreshed = { ...refreshed };
    result.refreshed_id_token_claims = refreshed.claims() ?? null;
    result.refreshed_userinfo = await client.fetchUserInfo(config, refreshed.access_token, idClaims.sub);
    current = refreshed;
  }

  // Revoke the newest refresh token (its whole grant), or the access token where there is none.
  const revoked = current.refresh_token ?? current.access_token;
  await client.tokenRevocation(config, revoked);
  result.revoked = current.refresh_token ? "refresh_token" : "access_token";
  if (confidential) {
    result.introspection_after_revocation = await client.tokenIntrospection(config, current.access_token);
  }
  result.userinfo_after_revocation = await refusal(client.fetchUserInfo(config, current.access_token, idClaims.sub));
  if (current.refresh_token) {
    result.refresh_after_revocation = await refusal(client.refreshTokenGrant(config, current.refresh_token));
  }
  // RP-Initiated Logout: the URL the service sends the resident's browser to.
  if (args["post-logout-redirect-uri"]) {
    result.end_session_url = client.buildEndSessionUrl(config, {
      id_token_hint: tokens.id_token,
      post_logout_redirect_uri: args["post-logout-redirect-uri"],
      state: "signed-out-state",
    }).href;
  }
  emit(result);
}

main().then(
  () => process.exit(0),
  (error) => {
    emit({ step: "error", error: describe(error) });
    process.exit(1);
  },
);
