// A real OpenID provider (oidc-provider) for graphene's OIDC integration tests.
//
// Usage: node provider.mjs <port>   (port 0 picks a free one)
// Prints exactly one line `ready http://127.0.0.1:<port>` once it listens.
//
// Besides the standard endpoints it serves test-only control routes under
// /_test/ (JSON in, JSON out):
//   POST /_test/mint     {claims, mode?}      -> {token}  hand-made (possibly bad) JWTs
//   POST /_test/rotate                        -> {kid}    replace the signing key
//   POST /_test/approve  {user_code, account?} -> {ok}    approve a device login
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { exportJWK, SignJWT } from 'jose';
import Provider from 'oidc-provider';
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

// oidc-provider prints its notices with console.info; send them to stderr so
// that stdout carries nothing but the ready line.
console.info = console.error;

// The resource indicator of graphene, also the `aud` of its access tokens.
// oidc-provider (RFC 8707) only accepts absolute URIs as resource indicators,
// so a bare `graphene` is rejected with invalid_target.
const AUDIENCE = 'urn:graphene';

// Confidential clients for the client_credentials grant and one public
// client for the device authorization grant.
const CLIENTS = [
  ...['analyst', 'plain'].map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  })),
  {
    client_id: 'cli',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    redirect_uris: [],
    response_types: [],
  },
];

// One in-memory store for every provider built here, so that sessions,
// grants and pending device codes survive a key rotation.
const adapter = createMemoryAdapter();

// Generates an RSA 2048 signing key; `jwk` is the private JWK handed to oidc-provider.
async function generateKey(kid) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
  return { kid, privateKey, publicKey, jwk };
}

// Builds a provider that signs with `key` only.
function buildProvider(issuer, key) {
  const provider = new Provider(issuer, {
    adapter,
    clients: CLIENTS,
    jwks: { keys: [key.jwk] },
    cookies: { keys: ['graphene-oidc-test-cookie-key'] },
    features: {
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A request without `resource` targets urn:graphene; of several
        // granted resources the first is used.
        defaultResource: (ctx, client, oneOf) => oneOf?.[0] ?? AUDIENCE,
        // The token request re-uses the resource from the device authorization.
        useGrantedResource: () => true,
        // Every resource server gets RS256-signed JWT access tokens.
        getResourceServerInfo: (ctx, resource) => ({
          audience: resource,
          scope: 'openid invoke',
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    // Role claims Keycloak-style, for the analyst client only.
    extraTokenClaims: (ctx, token) => (token.clientId === 'analyst'
      ? {
        realm_access: { roles: ['analyst', 'offline_access'] },
        resource_access: { graphene: { roles: ['deployer'] } },
      }
      : undefined),
  });

  // Log failures to stderr; expected device-flow polling answers are not failures.
  const quiet = new Set(['authorization_pending', 'slow_down']);
  for (const event of ['server_error', 'grant.error', 'device_authorization.error',
    'code_verification.error', 'device_resume.error', 'jwks.error', 'discovery.error']) {
    provider.on(event, (ctx, err) => {
      if (quiet.has(err?.error)) return;
      console.error(`[oidc] ${event}:`, err?.expose ? `${err.error} ${err.error_description ?? ''}` : err);
    });
  }
  return provider;
}

// --- hand-made tokens for /_test/mint -----------------------------------------

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

async function mint(issuer, key, body) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: issuer, aud: AUDIENCE, sub: 'minted', iat: now, exp: now + 300, ...(body.claims ?? {}) };
  for (const [name, value] of Object.entries(claims)) if (value === null) delete claims[name];

  const sign = (header, signingKey) => new SignJWT(claims).setProtectedHeader(header).sign(signingKey);

  switch (body.mode ?? 'rs256') {
    case 'rs256':
      return sign({ alg: 'RS256', kid: key.kid, typ: 'JWT' }, key.privateKey);
    case 'none':
      // Unsigned token: header.payload. with an empty signature.
      return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(claims)}.`;
    case 'hs256-pubkey': {
      // Algorithm confusion: HMAC keyed with the public key's SPKI PEM text.
      const pem = key.publicKey.export({ type: 'spki', format: 'pem' });
      return sign({ alg: 'HS256', kid: key.kid, typ: 'JWT' }, new TextEncoder().encode(pem));
    }
    case 'unknown-kid': {
      const stranger = await generateKey('stranger');
      return sign({ alg: 'RS256', kid: stranger.kid, typ: 'JWT' }, stranger.privateKey);
    }
    case 'tamper': {
      // Valid signature over the original payload, then the payload's sub is changed.
      const [header, , signature] = (await sign({ alg: 'RS256', kid: key.kid, typ: 'JWT' }, key.privateKey)).split('.');
      const sub = claims.sub === 'admin' ? 'root' : 'admin';
      return `${header}.${b64url({ ...claims, sub })}.${signature}`;
    }
    case 'no-kid':
      return sign({ alg: 'RS256', typ: 'JWT' }, key.privateKey);
    default:
      throw new Error(`unknown mode ${body.mode}`);
  }
}

// --- device approval for /_test/approve ---------------------------------------

// Plays the browser: enters the user code at /device, confirms it, signs in
// through the dev-interactions login form and grants consent, keeping cookies
// (with their paths) between requests.
async function approve(issuer, userCode, account) {
  const jar = new Map(); // `${path} ${name}` -> {name, path, value}

  const request = async (method, path, form) => {
    const url = new URL(path, issuer);
    const cookie = [...jar.values()]
      .filter((c) => url.pathname.startsWith(c.path))
      .map((c) => `${c.name}=${c.value}`)
      .join('; ');
    const res = await fetch(url, {
      method,
      redirect: 'manual',
      headers: {
        ...(cookie ? { cookie } : {}),
        ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      },
      body: form ? new URLSearchParams(form).toString() : undefined,
    });
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const attr = (n) => attrs.find((a) => a.toLowerCase().startsWith(`${n}=`))?.split('=')[1];
      const cookiePath = attr('path') ?? '/';
      const expires = attr('expires');
      const gone = !value || (expires && Date.parse(expires) <= Date.now());
      if (gone) jar.delete(`${cookiePath} ${name}`);
      else jar.set(`${cookiePath} ${name}`, { name, path: cookiePath, value });
    }
    return { status: res.status, location: res.headers.get('location'), html: await res.text() };
  };

  // Follows redirects from a response until a page is returned.
  const follow = async (res) => {
    for (let hops = 0; res.location && res.status >= 300 && res.status < 400; hops += 1) {
      if (hops > 10) throw new Error('too many redirects');
      res = await request('GET', res.location);
    }
    return res;
  };

  const field = (html, name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))?.[1];
  const action = (html) => html.match(/<form[^>]*action="([^"]+)"/)?.[1]?.replace(/&amp;/g, '&');
  // The message of an error page or of a re-rendered code form, tags removed.
  const errorOf = (page) => {
    const text = page.html.match(/<p class="red">([\s\S]*?)<\/p>/)?.[1]
      ?? [...page.html.matchAll(/<pre>([\s\S]*?)<\/pre>/g)].map((m) => m[1]).join('; ');
    return text.replace(/<[^>]*>/g, '').trim() || `unexpected page (HTTP ${page.status})`;
  };

  // 1. The user-code entry form carries the xsrf token.
  let page = await request('GET', '/device');
  const xsrf = field(page.html, 'xsrf');
  if (!xsrf) throw new Error('no xsrf field on /device');

  // 2. Submit the code, 3. confirm it; this starts the login interaction.
  page = await request('POST', '/device', { xsrf, user_code: userCode });
  if (!page.html.includes('op.deviceConfirmForm')) throw new Error(errorOf(page));
  page = await follow(await request('POST', '/device', { xsrf, user_code: userCode, confirm: 'yes' }));

  // 4. Answer the login and consent prompts until the success page shows.
  for (let steps = 0; steps < 5; steps += 1) {
    if (page.html.includes('Sign-in Success')) return;
    const prompt = field(page.html, 'prompt');
    const submit = action(page.html);
    if (prompt === 'login' && submit) {
      page = await follow(await request('POST', submit, { prompt, login: account, password: 'any' }));
    } else if (prompt === 'consent' && submit) {
      page = await follow(await request('POST', submit, { prompt }));
    } else {
      throw new Error(errorOf(page));
    }
  }
  throw new Error('device approval did not finish');
}

// --- server -------------------------------------------------------------------

const port = Number(process.argv[2] ?? 0);
const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

let generation = 1;
let key = await generateKey(`k${generation}`);
let handle = buildProvider(issuer, key).callback();

const readJson = async (req) => {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text ? JSON.parse(text) : {};
};

const sendJson = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

// Handles the /_test/ control routes.
async function control(req, res, path) {
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'POST only' });
  const body = await readJson(req);
  switch (path) {
    case '/_test/mint':
      return sendJson(res, 200, { token: await mint(issuer, key, body) });
    case '/_test/rotate':
      // New key k2, k3, ...; the new provider only knows the new key.
      generation += 1;
      key = await generateKey(`k${generation}`);
      handle = buildProvider(issuer, key).callback();
      return sendJson(res, 200, { kid: key.kid });
    case '/_test/approve':
      if (!body.user_code) return sendJson(res, 400, { ok: false, error: 'user_code is required' });
      try {
        await approve(issuer, body.user_code, body.account ?? 'alice');
        return sendJson(res, 200, { ok: true });
      } catch (err) {
        return sendJson(res, 200, { ok: false, error: String(err.message ?? err) });
      }
    default:
      return sendJson(res, 404, { error: 'unknown test route' });
  }
}

// Test routes first; everything else goes to the current provider.
server.on('request', (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  if (path.startsWith('/_test/')) {
    control(req, res, path).catch((err) => {
      console.error('[oidc] test route failed:', err);
      if (!res.headersSent) sendJson(res, 500, { error: String(err.message ?? err) });
    });
    return;
  }
  handle(req, res);
});

process.stdout.write(`ready ${issuer}\n`);
