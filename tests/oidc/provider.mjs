// A real OpenID provider for the OIDC sign-in tests: panva's oidc-provider (OpenID
// Certified), with its development login and consent pages, one client (netpacs) and
// a few test accounts. Started by tests/browser/test_oidc_signin.py:
//
//   node tests/oidc/provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI [REDIRECT_URI ...]
//
// Several redirect URIs: several netpacs servers (on their own ports) use it at once.
// The issuer is http://localhost:PORT: another site than netpacs on 127.0.0.1, as a
// real identity provider is. Every start makes a new RSA signing key (a new kid), so restarting the provider on
// the same port is a key rotation as netpacs sees it. Prints "listening" when ready.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, ...redirectUris] = process.argv.slice(2);
if (redirectUris.length === 0) {
  console.error('usage: node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI...');
  process.exit(2);
}

// The claims each test account has; the login page accepts any password for them.
const ACCOUNTS = {
  // East Sussex (RXC) clinician: trust and role from claims.
  'rxc.oidcuser': { name: 'Olive Idris', org_ods_code: 'RXC', netpacs_role: 'clinician' },
  // A user the IdP knows but who has no trust or role that netpacs knows.
  'nowhere.oidcuser': { name: 'Nora Where', org_ods_code: 'XYZ99', netpacs_role: 'janitor' },
  // The name of a netpacs account with a password (a demo user): must not take it over.
  'rxc.admin': { name: 'Not The Admin', org_ods_code: 'RXC', netpacs_role: 'admin' },
  // No trust/role claims at all: only a pre-provisioned netpacs account can admit them.
  'rtp.provisioned': { name: 'Pat Provisioned' },
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const issuer = `http://localhost:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      // netpacs's sign-in page: where the provider's sign-out sends the browser back.
      post_logout_redirect_uris: redirectUris.map((uri) => new URL('/signin', uri).href),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomUUID()] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  scopes: ['openid', 'profile', 'netpacs'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    netpacs: ['org_ods_code', 'netpacs_role'],
  },
  async findAccount(_ctx, id) {
    const claims = ACCOUNTS[id];
    if (!claims) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, ...claims };
      },
    };
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
