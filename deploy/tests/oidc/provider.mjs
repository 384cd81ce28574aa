// An OpenID provider on loopback for the OIDC login test (test_oidc.py), built on the npm package
// oidc-provider (certified by the OpenID Foundation).
//
//   node provider.mjs MODULE_DIR PORT SETTINGS_JSON [ISSUER [BIND_ADDRESS]]
//
// ISSUER defaults to http://127.0.0.1:PORT and BIND_ADDRESS to 127.0.0.1; a container on a network gives its
// own name (http://oidc:PORT) and 0.0.0.0 (test_helm_run.py).
// MODULE_DIR holds node_modules/oidc-provider (make test installs it into .venv/tools/oidc-provider).
// SETTINGS_JSON: {"client": {"client_id", "client_secret", "redirect_uris"}, "accounts_file": PATH}.
// The accounts file ({"NAME": {"groups": [...]}}) is read at every login, so a test can take a user out of a
// group at the provider. Login is oidc-provider's development form (any password); consent is granted to
// the one client, as a first-party application would be.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';

const [moduleDir, port, settingsFile, issuerArg, bindArg] = process.argv.slice(2);
const issuer = issuerArg ?? `http://127.0.0.1:${port}`;
const bind = bindArg ?? '127.0.0.1';
const entry = join(moduleDir, 'node_modules', 'oidc-provider', 'lib', 'index.js');
const { default: Provider } = await import(pathToFileURL(entry).href);
const settings = JSON.parse(readFileSync(settingsFile, 'utf8'));
const scopes = ['openid', 'profile', 'groups'];

const provider = new Provider(issuer, {
  clients: [{
    ...settings.client,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: settings.client.token_endpoint_auth_method ?? 'client_secret_basic',
  }],
  scopes,
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  async findAccount(ctx, id) {
    const accounts = JSON.parse(readFileSync(settings.accounts_file, 'utf8'));
    if (!Object.hasOwn(accounts, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, groups: accounts[id].groups };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(scopes.join(' '));
    await grant.save();
    return grant;
  },
});

provider.listen(Number(port), bind, () => {
  console.log(`oidc provider ${issuer} listening on ${bind}:${port}`);
});
