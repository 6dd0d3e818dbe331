// `npm run token -- --email ada@example.com --tenant acme --role Admin`: prints a token that a
// server in local identity mode accepts. Only a command on this machine can mint: no HTTP endpoint does.
import { parseArgs } from 'node:util';
import { loadOrCreateLocalSigningKey, mintLocalToken } from './auth/local-identity.js';
import { ConfigError, loadLocalIdentityConfig } from './config.js';

const usage = `Usage: npm run token -- --email <email> [--tenant <tenant id>] [--role <Frontegg role>]...
                       [--name <name>] [--user-id <id>] [--expires-in <seconds>]`;

function fail(message: string): never {
  process.stderr.write(`${message}\n${usage}\n`);
  process.exit(1);
}

let args;
try {
  args = parseArgs({
    options: {
      email: { type: 'string' },
      tenant: { type: 'string', default: 'acme' },
      role: { type: 'string', multiple: true, default: [] },
      name: { type: 'string' },
      'user-id': { type: 'string' },
      'expires-in': { type: 'string', default: '3600' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (error) {
  fail((error as Error).message);
}

if (args.help) {
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}
if (!args.email?.includes('@')) fail('--email is required');
const expiresInSeconds = Number(args['expires-in']);
if (!Number.isInteger(expiresInSeconds) || expiresInSeconds <= 0) fail('--expires-in must be a positive whole number of seconds');

let config;
try {
  config = loadLocalIdentityConfig();
} catch (error) {
  if (error instanceof ConfigError) fail(error.message);
  throw error;
}

const key = await loadOrCreateLocalSigningKey(config.identity.keyFile);
const token = await mintLocalToken(key, {
  email: args.email,
  tenantId: args.tenant,
  roles: args.role,
  name: args.name,
  userId: args['user-id'],
  expiresInSeconds,
});
process.stdout.write(`${token}\n`);
