import { z } from 'zod';
import type { DatabaseTarget } from '../db/database.js';
import { DEFAULT_TOKEN_CACHE_ENTRIES, DEFAULT_TOKEN_CACHE_MAX_BYTES } from './auth/access-token.js';
import { DEFAULT_EVENT_RETENTION_MS, DEFAULT_SUBSCRIPTIONS_PER_INSTANCE, DEFAULT_SUBSCRIPTIONS_PER_PERSON } from './chat-events.js';
import { DEFAULT_HEAVY_CALLS_PER_PERSON } from './in-flight-limit.js';
import type { LanguageModelConfig } from './language-model.js';
import { DEFAULT_MEMBER_CACHE, type MemberCacheOptions } from './member-cache.js';
import { DEFAULT_REPLY_LEASE_MS, type ReplyRunnerOptions } from './replies.js';
import { DEFAULT_WRITES_PER_MINUTE } from './write-limit.js';

const optionalString = z
  .string()
  .trim()
  .transform((value) => value || undefined)
  .optional();

const httpUrl = z
  .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
  .transform((value) => value.replace(/\/+$/, ''));

/** A comma-separated list, its entries trimmed and empty ones dropped; `undefined` when unset. */
const commaSeparated = (value: string | undefined) =>
  value
    ?.split(',')
    .map((entry) => entry.trim())
    .filter(Boolean);

/** A whole number within [min, max], with a default. */
function wholeNumber(fallback: number, min: number, max: number) {
  const message = `must be a whole number from ${min} to ${max}`;
  return optionalString
    .default(String(fallback))
    .pipe(z.coerce.number<string>({ error: message }).int({ error: message }).min(min, { error: message }).max(max, { error: message }));
}

const portNumber = z.coerce
  .number<string>({ error: 'must be a port number (0-65535)' })
  .int({ error: 'must be a port number (0-65535)' })
  .min(0, { error: 'must be a port number (0-65535)' })
  .max(65_535, { error: 'must be a port number (0-65535)' });

const postgresUrl = z.url({ protocol: /^postgres(ql)?$/, error: 'must be a postgres:// or postgresql:// URL' });

export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
export const DEFAULT_SYSTEM_PROMPT = 'You are a helpful assistant. Answer clearly and concisely.';
const DEFAULT_LLM_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_CONNECTIONS = 10_000;

const envSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  DATABASE_URL: optionalString.pipe(postgresUrl.optional()),
  DATABASE_DIRECT_URL: optionalString.pipe(postgresUrl.optional()),
  DATABASE_POOL_MODE: optionalString.default('session').pipe(
    z.enum(['session', 'transaction'], { error: 'must be session or transaction' }),
  ),
  PGLITE_DATA_DIR: optionalString.default('.data/pglite'),
  LOCAL_IDENTITY_KEY_FILE: optionalString.default('.data/local-identity/signing-key.json'),
  FRONTEGG_BASE_URL: optionalString.pipe(httpUrl.optional()),
  FRONTEGG_ISSUER: optionalString,
  FRONTEGG_JWKS_URL: optionalString.pipe(httpUrl.optional()),
  FRONTEGG_AUDIENCE: optionalString
    .transform(commaSeparated)
    // A list with no entries would quietly turn the audience check off.
    .refine((audiences) => audiences === undefined || audiences.length > 0, {
      error: 'must name at least one audience (comma-separated), or be unset',
    }),
  FRONTEGG_WEBHOOK_SECRET: optionalString.pipe(
    z.string().min(16, { error: 'must be at least 16 characters: set a long random secret on the webhook in Frontegg' }).optional(),
  ),
  FRONTEGG_JWKS_MAX_AGE_SECONDS: wholeNumber(600, 1, 86_400),
  FRONTEGG_JWKS_COOLDOWN_SECONDS: wholeNumber(30, 1, 3_600),
  DATABASE_POOL_SIZE: wholeNumber(10, 1, 1_000),
  DATABASE_CONNECT_TIMEOUT_SECONDS: wholeNumber(5, 1, 300),
  DATABASE_STATEMENT_TIMEOUT_MS: wholeNumber(5_000, 100, 600_000),
  DATABASE_LOCK_TIMEOUT_MS: wholeNumber(2_000, 10, 600_000),
  PROCEDURE_TIMEOUT_MS: wholeNumber(15_000, 100, 600_000),
  TOKEN_CACHE_MAX_ENTRIES: wholeNumber(DEFAULT_TOKEN_CACHE_ENTRIES, 0, 1_000_000),
  TOKEN_CACHE_MAX_MB: wholeNumber(DEFAULT_TOKEN_CACHE_MAX_BYTES / 2 ** 20, 1, 4_096),
  MEMBER_CACHE_MAX_MB: wholeNumber(DEFAULT_MEMBER_CACHE.maxBytes / 2 ** 20, 1, 4_096),
  MEMBER_CACHE_MAX_ENTRIES: wholeNumber(DEFAULT_MEMBER_CACHE.maxEntries, 0, 1_000_000),
  MEMBER_CACHE_TTL_SECONDS: wholeNumber(DEFAULT_MEMBER_CACHE.ttlMs / 1000, 0, 3_600),
  HEAVY_CALLS_PER_PERSON: wholeNumber(DEFAULT_HEAVY_CALLS_PER_PERSON, 1, 1_000),
  CHAT_EVENTS_RETENTION_MINUTES: wholeNumber(DEFAULT_EVENT_RETENTION_MS / 60_000, 10, 7 * 24 * 60),
  SUBSCRIPTIONS_PER_PERSON: wholeNumber(DEFAULT_SUBSCRIPTIONS_PER_PERSON, 1, 1_000),
  SUBSCRIPTIONS_PER_INSTANCE: wholeNumber(DEFAULT_SUBSCRIPTIONS_PER_INSTANCE, 1, 1_000_000),
  ASSISTANT_REPLIES: optionalString.default('on').pipe(z.enum(['on', 'off'], { error: 'must be on or off' })),
  LLM_BASE_URL: optionalString.pipe(httpUrl.optional()),
  LLM_API_KEY: optionalString,
  LLM_MODEL: optionalString,
  LLM_SYSTEM_PROMPT: optionalString.default(DEFAULT_SYSTEM_PROMPT),
  LLM_TIMEOUT_MS: wholeNumber(DEFAULT_LLM_TIMEOUT_MS, 1_000, 600_000),
  LLM_MAX_CONCURRENT_REPLIES: wholeNumber(50, 1, 100_000),
  LLM_MAX_REPLIES_PER_ORGANIZATION: wholeNumber(20, 1, 100_000),
  LLM_MAX_REPLIES_PER_PERSON: wholeNumber(3, 1, 1_000),
  LLM_MAX_OUTPUT_TOKENS: wholeNumber(4_096, 16, 1_000_000),
  LLM_MAX_REPLY_SECONDS: wholeNumber(300, 10, 3_600),
  LLM_CONTEXT_MAX_MESSAGES: wholeNumber(20, 1, 1_000),
  LLM_CONTEXT_MAX_CHARACTERS: wholeNumber(48_000, 1_000, 10_000_000),
  LLM_REPLY_LEASE_SECONDS: wholeNumber(DEFAULT_REPLY_LEASE_MS / 1000, 3, 3_600),
  CORS_ORIGINS: optionalString.transform((value, context) => {
    const origins = commaSeparated(value) ?? [];
    const bad = origins.find((origin) => !URL.canParse(origin) || new URL(origin).origin !== origin);
    if (bad !== undefined) {
      context.addIssue({ code: 'custom', message: `must list exact origins (scheme://host[:port], no path or trailing slash), comma-separated; "${bad}" is not one` });
      return z.NEVER;
    }
    return origins;
  }),
  PORT: optionalString.default('3000').pipe(portNumber),
  HOST: optionalString.default('127.0.0.1'),
  METRICS_PORT: optionalString.pipe(portNumber.optional()),
  METRICS_HOST: optionalString.default('127.0.0.1'),
  RATE_LIMIT_WRITES_PER_MINUTE: wholeNumber(DEFAULT_WRITES_PER_MINUTE, 0, 1_000_000),
  HTTP_IDLE_TIMEOUT_SECONDS: wholeNumber(DEFAULT_IDLE_TIMEOUT_MS / 1000, 1, 3_600),
  HTTP_MAX_CONNECTIONS: wholeNumber(DEFAULT_MAX_CONNECTIONS, 1, 1_000_000),
});

export type IdentityConfig =
  | {
      mode: 'frontegg';
      issuer: string;
      jwksUrl: string;
      audience: string[] | undefined;
      keySet: { maxAgeMs: number; cooldownMs: number };
    }
  | { mode: 'local'; keyFile: string };

export interface Config {
  nodeEnv: 'development' | 'production' | 'test';
  logLevel: z.infer<typeof envSchema>['LOG_LEVEL'];
  database: DatabaseTarget;
  identity: IdentityConfig;
  /** The secret key of Frontegg's webhook; without it `POST /webhooks/frontegg` answers 404. */
  fronteggWebhookSecret: string | undefined;
  /** A procedure that has not answered by then answers 503. */
  procedureTimeoutMs: number;
  /** How many verified tokens are remembered until they expire (0: none), and in how much memory. */
  tokenCacheEntries: number;
  tokenCacheMaxBytes: number;
  /** Who counts as provisioned recently (a size or lifetime of 0: nobody). */
  memberCache: MemberCacheOptions;
  /** Heavy calls (pages of messages, writes) one person may have in progress per instance. */
  heavyCallsPerPerson: number;
  /** Writes one person may make a minute per instance, a third of them at once (0: no limit). */
  writesPerMinute: number;
  /** Where Prometheus scrapes `/metrics`; none: no metrics server. */
  metrics: { port: number; host: string } | undefined;
  /** `chat.events`: how long events are kept for replay, and the streams an instance holds per person and in all. */
  chatEvents: { retentionMs: number; subscriptionsPerPerson: number; subscriptionsPerInstance: number };
  /** Assistant replies to each message, or none (`ASSISTANT_REPLIES=off`). */
  assistant: AssistantConfig;
  port: number;
  host: string;
  /** A connection with no byte moving either way for this long is closed. */
  idleTimeoutMs: number;
  /** Connections open at once. */
  maxConnections: number;
  /** Origins whose pages may call the API from a browser; empty: none. */
  corsOrigins: string[];
}

export type AssistantConfig =
  /** Without an assistant, an instance still ends replies an earlier deployment left streaming. */
  | { mode: 'off'; leaseMs: number }
  | ({
      mode: 'on';
      model: LanguageModelConfig;
      /** A reply its instance stopped renewing for this long is marked failed by any instance. */
      leaseMs: number;
    } & Pick<
      ReplyRunnerOptions,
      | 'systemPrompt'
      | 'timeoutMs'
      | 'maxConcurrentReplies'
      | 'maxRepliesPerOrganization'
      | 'maxRepliesPerPerson'
      | 'maxOutputTokens'
      | 'maxReplyMs'
      | 'context'
    >);

/** Raised for a bad environment; its message is one line naming the variable. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const variable = issue?.path.join('.') || 'environment';
    throw new ConfigError(`Invalid configuration: ${variable} ${issue?.message ?? 'is invalid'}`);
  }
  const vars = parsed.data;
  return {
    nodeEnv: vars.NODE_ENV,
    logLevel: vars.LOG_LEVEL,
    database: databaseTarget(vars),
    identity: identityConfig(vars),
    fronteggWebhookSecret: vars.FRONTEGG_WEBHOOK_SECRET,
    procedureTimeoutMs: vars.PROCEDURE_TIMEOUT_MS,
    tokenCacheEntries: vars.TOKEN_CACHE_MAX_ENTRIES,
    tokenCacheMaxBytes: vars.TOKEN_CACHE_MAX_MB * 2 ** 20,
    memberCache: {
      maxEntries: vars.MEMBER_CACHE_MAX_ENTRIES,
      ttlMs: vars.MEMBER_CACHE_TTL_SECONDS * 1000,
      maxBytes: vars.MEMBER_CACHE_MAX_MB * 2 ** 20,
    },
    heavyCallsPerPerson: vars.HEAVY_CALLS_PER_PERSON,
    writesPerMinute: vars.RATE_LIMIT_WRITES_PER_MINUTE,
    metrics: metricsConfig(vars),
    chatEvents: {
      retentionMs: vars.CHAT_EVENTS_RETENTION_MINUTES * 60_000,
      subscriptionsPerPerson: vars.SUBSCRIPTIONS_PER_PERSON,
      subscriptionsPerInstance: vars.SUBSCRIPTIONS_PER_INSTANCE,
    },
    assistant: assistantConfig(vars),
    port: vars.PORT,
    host: vars.HOST,
    idleTimeoutMs: vars.HTTP_IDLE_TIMEOUT_SECONDS * 1000,
    maxConnections: vars.HTTP_MAX_CONNECTIONS,
    corsOrigins: vars.CORS_ORIGINS,
  };
}

/**
 * The configuration for a command that mints local tokens (`npm run token`, `npm run demo`): the
 * same environment as the server's, refused when the server verifies Frontegg tokens instead.
 */
export function loadLocalIdentityConfig(
  env: NodeJS.ProcessEnv = process.env,
): Config & { identity: Extract<IdentityConfig, { mode: 'local' }> } {
  const config = loadConfig(env);
  const { identity } = config;
  if (identity.mode !== 'local') {
    throw new ConfigError(
      'The server is configured for a Frontegg environment, so it accepts no local tokens: sign in through Frontegg.',
    );
  }
  return { ...config, identity };
}

function metricsConfig(vars: z.infer<typeof envSchema>): Config['metrics'] {
  if (vars.METRICS_PORT === undefined) return undefined;
  // The API's port never serves the metrics: a request there for /metrics is a 404.
  if (vars.METRICS_PORT === vars.PORT && vars.PORT !== 0) {
    throw new ConfigError(`Invalid configuration: METRICS_PORT must differ from PORT (${vars.PORT}): the metrics have a port of their own`);
  }
  return { port: vars.METRICS_PORT, host: vars.METRICS_HOST };
}

function databaseTarget(vars: z.infer<typeof envSchema>): DatabaseTarget {
  if (!vars.DATABASE_URL) {
    const needsUrl = vars.DATABASE_DIRECT_URL
      ? 'DATABASE_DIRECT_URL'
      : vars.DATABASE_POOL_MODE === 'transaction'
        ? 'DATABASE_POOL_MODE=transaction'
        : undefined;
    if (needsUrl) {
      throw new ConfigError(`Invalid configuration: ${needsUrl} needs DATABASE_URL (without it the server runs on the embedded PGlite)`);
    }
    return { kind: 'pglite', dataDir: vars.PGLITE_DATA_DIR };
  }
  if (vars.DATABASE_POOL_MODE === 'transaction' && !vars.DATABASE_DIRECT_URL) {
    // Found now rather than at the first migration or the first LISTEN, which would fail or hang.
    throw new ConfigError(
      'Invalid configuration: DATABASE_DIRECT_URL is required when DATABASE_POOL_MODE=transaction: migrations take a session lock, which a transaction-mode pooler does not keep; set it to a direct (or session-mode) URL of the same database',
    );
  }
  return {
    kind: 'postgres',
    url: vars.DATABASE_URL,
    directUrl: vars.DATABASE_DIRECT_URL,
    poolMode: vars.DATABASE_POOL_MODE,
    poolSize: vars.DATABASE_POOL_SIZE,
    connectTimeoutSeconds: vars.DATABASE_CONNECT_TIMEOUT_SECONDS,
    statementTimeoutMs: vars.DATABASE_STATEMENT_TIMEOUT_MS,
    lockTimeoutMs: vars.DATABASE_LOCK_TIMEOUT_MS,
  };
}

function assistantConfig(vars: z.infer<typeof envSchema>): AssistantConfig {
  if (vars.ASSISTANT_REPLIES === 'off') return { mode: 'off', leaseMs: vars.LLM_REPLY_LEASE_SECONDS * 1000 };
  let model: LanguageModelConfig;
  if (vars.LLM_BASE_URL) {
    if (!vars.LLM_MODEL) throw new ConfigError('Invalid configuration: LLM_MODEL is required with LLM_BASE_URL (the model to ask, e.g. gpt-4o-mini or llama3.2)');
    model = { kind: 'openai-compatible', baseUrl: vars.LLM_BASE_URL, apiKey: vars.LLM_API_KEY, model: vars.LLM_MODEL };
  } else {
    const partial = vars.LLM_MODEL ? 'LLM_MODEL' : vars.LLM_API_KEY ? 'LLM_API_KEY' : undefined;
    if (partial) {
      throw new ConfigError(`Invalid configuration: ${partial} needs LLM_BASE_URL (for OpenAI: https://api.openai.com/v1)`);
    }
    if (vars.NODE_ENV === 'production') {
      throw new ConfigError(
        'Invalid configuration: LLM_BASE_URL and LLM_MODEL are required when NODE_ENV=production (the demo responder is for development only), or set ASSISTANT_REPLIES=off',
      );
    }
    model = { kind: 'demo' };
  }
  return {
    mode: 'on',
    model,
    systemPrompt: vars.LLM_SYSTEM_PROMPT,
    timeoutMs: vars.LLM_TIMEOUT_MS,
    maxConcurrentReplies: vars.LLM_MAX_CONCURRENT_REPLIES,
    maxRepliesPerOrganization: vars.LLM_MAX_REPLIES_PER_ORGANIZATION,
    maxRepliesPerPerson: vars.LLM_MAX_REPLIES_PER_PERSON,
    maxOutputTokens: vars.LLM_MAX_OUTPUT_TOKENS,
    maxReplyMs: vars.LLM_MAX_REPLY_SECONDS * 1000,
    context: { maxMessages: vars.LLM_CONTEXT_MAX_MESSAGES, maxCharacters: vars.LLM_CONTEXT_MAX_CHARACTERS },
    leaseMs: vars.LLM_REPLY_LEASE_SECONDS * 1000,
  };
}

function identityConfig(vars: z.infer<typeof envSchema>): IdentityConfig {
  const issuer = vars.FRONTEGG_ISSUER ?? vars.FRONTEGG_BASE_URL;
  const jwksUrl =
    vars.FRONTEGG_JWKS_URL ??
    (vars.FRONTEGG_BASE_URL ? `${vars.FRONTEGG_BASE_URL}/.well-known/jwks.json` : undefined);
  if (issuer && jwksUrl) {
    if (vars.NODE_ENV === 'production') {
      // Keys fetched in plain text can be swapped by anyone on the path, and with them any token.
      const plain = [
        { variable: vars.FRONTEGG_JWKS_URL ? 'FRONTEGG_JWKS_URL' : 'FRONTEGG_BASE_URL', url: jwksUrl },
        { variable: vars.FRONTEGG_ISSUER ? 'FRONTEGG_ISSUER' : 'FRONTEGG_BASE_URL', url: issuer },
      ].find(({ url }) => !URL.canParse(url) || new URL(url).protocol !== 'https:');
      if (plain) {
        throw new ConfigError(`Invalid configuration: ${plain.variable} must be an https:// URL when NODE_ENV=production`);
      }
    }
    return {
      mode: 'frontegg',
      issuer,
      jwksUrl,
      audience: vars.FRONTEGG_AUDIENCE,
      keySet: {
        maxAgeMs: vars.FRONTEGG_JWKS_MAX_AGE_SECONDS * 1000,
        cooldownMs: vars.FRONTEGG_JWKS_COOLDOWN_SECONDS * 1000,
      },
    };
  }
  const partial = vars.FRONTEGG_ISSUER ?? vars.FRONTEGG_JWKS_URL ?? vars.FRONTEGG_AUDIENCE;
  if (partial) {
    throw new ConfigError(
      'Invalid configuration: FRONTEGG_BASE_URL is required (or both FRONTEGG_ISSUER and FRONTEGG_JWKS_URL)',
    );
  }
  if (vars.NODE_ENV === 'production') {
    throw new ConfigError(
      'Invalid configuration: FRONTEGG_BASE_URL is required when NODE_ENV=production (local identity mode is for development only)',
    );
  }
  return { mode: 'local', keyFile: vars.LOCAL_IDENTITY_KEY_FILE };
}
