import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';

describe('loadConfig', () => {
  it('defaults to the embedded database and local identity mode', () => {
    expect(loadConfig({})).toEqual({
      nodeEnv: 'development',
      logLevel: 'info',
      database: { kind: 'pglite', dataDir: '.data/pglite' },
      identity: { mode: 'local', keyFile: '.data/local-identity/signing-key.json' },
      // No webhook secret: /webhooks/frontegg answers 404.
      fronteggWebhookSecret: undefined,
      procedureTimeoutMs: 15_000,
      tokenCacheEntries: 10_000,
      tokenCacheMaxBytes: 32 * 2 ** 20,
      memberCache: { maxEntries: 10_000, ttlMs: 60_000, maxBytes: 16 * 2 ** 20 },
      heavyCallsPerPerson: 10,
      // 60 writes a minute per person, 20 at once.
      writesPerMinute: 60,
      // No METRICS_PORT: no metrics server.
      metrics: undefined,
      chatEvents: { retentionMs: 60 * 60_000, subscriptionsPerPerson: 20, subscriptionsPerInstance: 5_000 },
      // No language model configured: the demo responder, in development only.
      assistant: {
        mode: 'on',
        model: { kind: 'demo' },
        systemPrompt: 'You are a helpful assistant. Answer clearly and concisely.',
        timeoutMs: 30_000,
        maxConcurrentReplies: 50,
        maxRepliesPerOrganization: 20,
        maxRepliesPerPerson: 3,
        maxOutputTokens: 4_096,
        maxReplyMs: 300_000,
        context: { maxMessages: 20, maxCharacters: 48_000 },
        leaseMs: 30_000,
      },
      port: 3000,
      host: '127.0.0.1',
      idleTimeoutMs: 30_000,
      maxConnections: 10_000,
      corsOrigins: [],
    });
  });

  it('derives issuer and key set from FRONTEGG_BASE_URL, and splits the audience list', () => {
    const config = loadConfig({
      FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com/',
      FRONTEGG_AUDIENCE: 'client-a, client-b',
      DATABASE_URL: 'postgres://app@db.internal:5432/chat',
      PORT: '8080',
      HOST: '0.0.0.0',
    });
    expect(config.identity).toEqual({
      mode: 'frontegg',
      issuer: 'https://app-abc.frontegg.com',
      jwksUrl: 'https://app-abc.frontegg.com/.well-known/jwks.json',
      audience: ['client-a', 'client-b'],
      keySet: { maxAgeMs: 600_000, cooldownMs: 30_000 },
    });
    expect(config.database).toEqual({
      kind: 'postgres',
      url: 'postgres://app@db.internal:5432/chat',
      poolMode: 'session',
      poolSize: 10,
      connectTimeoutSeconds: 5,
      statementTimeoutMs: 5_000,
      lockTimeoutMs: 2_000,
    });
    expect([config.port, config.host]).toEqual([8080, '0.0.0.0']);
  });

  it('splits CORS_ORIGINS into exact origins', () => {
    expect(loadConfig({ CORS_ORIGINS: 'http://localhost:5173, https://chat.example.com' }).corsOrigins).toEqual(['http://localhost:5173', 'https://chat.example.com']);
  });

  it('takes the webhook secret as set', () => {
    expect(loadConfig({ FRONTEGG_WEBHOOK_SECRET: ' a-long-random-webhook-secret ' }).fronteggWebhookSecret).toBe('a-long-random-webhook-secret');
  });

  it('takes FRONTEGG_ISSUER and FRONTEGG_JWKS_URL as overrides', () => {
    const config = loadConfig({
      FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com',
      FRONTEGG_ISSUER: 'https://auth.example.com',
      FRONTEGG_JWKS_URL: 'https://keys.example.com/jwks.json',
      NODE_ENV: 'production',
      ASSISTANT_REPLIES: 'off',
    });
    expect(config.identity).toMatchObject({ issuer: 'https://auth.example.com', jwksUrl: 'https://keys.example.com/jwks.json' });
  });

  it('accepts https:// in any letter case in production', () => {
    const config = loadConfig({ NODE_ENV: 'production', FRONTEGG_BASE_URL: 'HTTPS://app-abc.frontegg.com', ASSISTANT_REPLIES: 'off' });
    expect(config.identity).toMatchObject({ mode: 'frontegg' });
  });

  it('accepts http:// Frontegg URLs outside production (a local stand-in)', () => {
    expect(loadConfig({ FRONTEGG_BASE_URL: 'http://127.0.0.1:8080' }).identity).toMatchObject({ mode: 'frontegg' });
  });

  it('takes a transaction-mode pooler only with a direct URL beside it, and says so in one line', () => {
    const pooled = 'postgres://app@pooler.internal:6432/chat';
    const direct = 'postgres://app@db.internal:5432/chat';
    expect(loadConfig({ DATABASE_URL: pooled, DATABASE_POOL_MODE: 'transaction', DATABASE_DIRECT_URL: direct }).database).toMatchObject({
      kind: 'postgres',
      url: pooled,
      directUrl: direct,
      poolMode: 'transaction',
    });
    expect(() => loadConfig({ DATABASE_URL: pooled, DATABASE_POOL_MODE: 'transaction' })).toThrow(
      /^Invalid configuration: DATABASE_DIRECT_URL is required when DATABASE_POOL_MODE=transaction: [^\n]+$/,
    );
    // A session-mode URL is its own direct URL.
    expect(loadConfig({ DATABASE_URL: direct }).database).toMatchObject({ poolMode: 'session', directUrl: undefined });
    expect(() => loadConfig({ DATABASE_URL: pooled, DATABASE_POOL_MODE: 'statement' })).toThrow(
      'Invalid configuration: DATABASE_POOL_MODE must be session or transaction',
    );
    expect(() => loadConfig({ DATABASE_DIRECT_URL: direct })).toThrow(/DATABASE_DIRECT_URL needs DATABASE_URL/);
    expect(() => loadConfig({ DATABASE_POOL_MODE: 'transaction' })).toThrow(/DATABASE_POOL_MODE=transaction needs DATABASE_URL/);
    expect(() => loadConfig({ DATABASE_URL: pooled, DATABASE_DIRECT_URL: 'http://db' })).toThrow(
      'Invalid configuration: DATABASE_DIRECT_URL must be a postgres:// or postgresql:// URL',
    );
  });

  it('serves metrics on METRICS_PORT, on loopback unless METRICS_HOST says otherwise, and never on the API port', () => {
    expect(loadConfig({ METRICS_PORT: '9464' }).metrics).toEqual({ port: 9464, host: '127.0.0.1' });
    expect(loadConfig({ METRICS_PORT: '9464', METRICS_HOST: '0.0.0.0' }).metrics).toEqual({ port: 9464, host: '0.0.0.0' });
    expect(() => loadConfig({ METRICS_PORT: '3000' })).toThrow('Invalid configuration: METRICS_PORT must differ from PORT (3000): the metrics have a port of their own');
    expect(() => loadConfig({ METRICS_PORT: 'nine' })).toThrow('Invalid configuration: METRICS_PORT must be a port number (0-65535)');
  });

  it('reads the write limit, where 0 turns it off', () => {
    expect(loadConfig({ RATE_LIMIT_WRITES_PER_MINUTE: '0' }).writesPerMinute).toBe(0);
    expect(loadConfig({ RATE_LIMIT_WRITES_PER_MINUTE: '600' }).writesPerMinute).toBe(600);
    expect(() => loadConfig({ RATE_LIMIT_WRITES_PER_MINUTE: '-1' })).toThrow(/RATE_LIMIT_WRITES_PER_MINUTE must be a whole number from 0/);
  });

  it('reads the limits on heavy calls, idle connections and open connections', () => {
    const config = loadConfig({
      HEAVY_CALLS_PER_PERSON: '2',
      HTTP_IDLE_TIMEOUT_SECONDS: '5',
      HTTP_MAX_CONNECTIONS: '100',
      DATABASE_URL: 'postgres://app@db.internal:5432/chat',
      DATABASE_LOCK_TIMEOUT_MS: '250',
    });
    expect([config.heavyCallsPerPerson, config.idleTimeoutMs, config.maxConnections]).toEqual([2, 5_000, 100]);
    expect(config.database).toMatchObject({ lockTimeoutMs: 250 });
    expect(() => loadConfig({ HEAVY_CALLS_PER_PERSON: '0' })).toThrow(/HEAVY_CALLS_PER_PERSON must be a whole number from 1/);
  });

  it('reads how long chat events are kept for replay, at least 10 minutes, and the streams per person', () => {
    const config = loadConfig({ CHAT_EVENTS_RETENTION_MINUTES: '10', SUBSCRIPTIONS_PER_PERSON: '3', SUBSCRIPTIONS_PER_INSTANCE: '100' });
    expect(config.chatEvents).toEqual({ retentionMs: 600_000, subscriptionsPerPerson: 3, subscriptionsPerInstance: 100 });
    expect(() => loadConfig({ CHAT_EVENTS_RETENTION_MINUTES: '5' })).toThrow(
      'Invalid configuration: CHAT_EVENTS_RETENTION_MINUTES must be a whole number from 10 to 10080',
    );
    expect(() => loadConfig({ SUBSCRIPTIONS_PER_PERSON: '0' })).toThrow(/SUBSCRIPTIONS_PER_PERSON must be a whole number from 1/);
  });

  it('reads the timeouts, pool size and key-set lifetimes', () => {
    const config = loadConfig({
      FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com',
      FRONTEGG_JWKS_MAX_AGE_SECONDS: '120',
      FRONTEGG_JWKS_COOLDOWN_SECONDS: '5',
      DATABASE_URL: 'postgres://app@db.internal:5432/chat',
      DATABASE_POOL_SIZE: '25',
      DATABASE_CONNECT_TIMEOUT_SECONDS: '2',
      DATABASE_STATEMENT_TIMEOUT_MS: '1500',
      PROCEDURE_TIMEOUT_MS: '4000',
    });
    expect(config.procedureTimeoutMs).toBe(4_000);
    expect(config.identity).toMatchObject({ keySet: { maxAgeMs: 120_000, cooldownMs: 5_000 } });
    expect(config.database).toMatchObject({ poolSize: 25, connectTimeoutSeconds: 2, statementTimeoutMs: 1_500 });
  });

  it('reads the cache sizes and lifetime, where 0 turns a cache off', () => {
    const config = loadConfig({
      TOKEN_CACHE_MAX_ENTRIES: '0',
      MEMBER_CACHE_MAX_ENTRIES: '500',
      MEMBER_CACHE_TTL_SECONDS: '15',
      TOKEN_CACHE_MAX_MB: '8',
      MEMBER_CACHE_MAX_MB: '2',
    });
    expect(config.tokenCacheEntries).toBe(0);
    expect(config.tokenCacheMaxBytes).toBe(8 * 2 ** 20);
    expect(config.memberCache).toEqual({ maxEntries: 500, ttlMs: 15_000, maxBytes: 2 * 2 ** 20 });
  });

  it.each([
    [{ DATABASE_STATEMENT_TIMEOUT_MS: '0' }, 'Invalid configuration: DATABASE_STATEMENT_TIMEOUT_MS must be a whole number from 100 to 600000'],
    [{ DATABASE_POOL_SIZE: 'many' }, /^Invalid configuration: DATABASE_POOL_SIZE must be a whole number/],
    [{ FRONTEGG_JWKS_COOLDOWN_SECONDS: '1.5' }, /^Invalid configuration: FRONTEGG_JWKS_COOLDOWN_SECONDS must be a whole number/],
    [{ MEMBER_CACHE_TTL_SECONDS: '7200' }, 'Invalid configuration: MEMBER_CACHE_TTL_SECONDS must be a whole number from 0 to 3600'],
    [{ TOKEN_CACHE_MAX_ENTRIES: '-1' }, /^Invalid configuration: TOKEN_CACHE_MAX_ENTRIES must be a whole number/],
    [{ PORT: '70000' }, 'Invalid configuration: PORT must be a port number (0-65535)'],
    [{ DATABASE_URL: 'mysql://db/chat' }, 'Invalid configuration: DATABASE_URL must be a postgres:// or postgresql:// URL'],
    [{ FRONTEGG_BASE_URL: 'app-abc.frontegg.com' }, 'Invalid configuration: FRONTEGG_BASE_URL must be an http(s) URL'],
    [{ FRONTEGG_JWKS_URL: 'https://keys.example.com/jwks.json' }, /FRONTEGG_BASE_URL is required \(or both/],
    [{ FRONTEGG_AUDIENCE: 'client-a' }, /FRONTEGG_BASE_URL is required \(or both/],
    [{ NODE_ENV: 'production' }, /FRONTEGG_BASE_URL is required when NODE_ENV=production/],
    [{ LOG_LEVEL: 'loud' }, /^Invalid configuration: LOG_LEVEL /],
    [{ CORS_ORIGINS: 'https://app.example.com/' }, /^Invalid configuration: CORS_ORIGINS must list exact origins/],
    [{ CORS_ORIGINS: 'https://app.example.com, app.example.com' }, /"app.example.com" is not one/],
    [{ FRONTEGG_WEBHOOK_SECRET: 'short-secret' }, /^Invalid configuration: FRONTEGG_WEBHOOK_SECRET must be at least 16 characters/],
    [
      { FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com', FRONTEGG_AUDIENCE: ' , ,' },
      'Invalid configuration: FRONTEGG_AUDIENCE must name at least one audience (comma-separated), or be unset',
    ],
    [
      { NODE_ENV: 'production', FRONTEGG_BASE_URL: 'http://app-abc.frontegg.com' },
      'Invalid configuration: FRONTEGG_BASE_URL must be an https:// URL when NODE_ENV=production',
    ],
    [
      { NODE_ENV: 'production', FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com', FRONTEGG_JWKS_URL: 'http://keys.example.com/jwks.json' },
      'Invalid configuration: FRONTEGG_JWKS_URL must be an https:// URL when NODE_ENV=production',
    ],
    [
      { NODE_ENV: 'production', FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com', FRONTEGG_ISSUER: 'http://auth.example.com' },
      'Invalid configuration: FRONTEGG_ISSUER must be an https:// URL when NODE_ENV=production',
    ],
  ])('refuses %j with one line naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });
});

describe('loadConfig: the assistant', () => {
  const production = { NODE_ENV: 'production', FRONTEGG_BASE_URL: 'https://app-abc.frontegg.com' };

  it('speaks to an OpenAI-compatible endpoint given LLM_BASE_URL and LLM_MODEL, with the key when there is one', () => {
    const config = loadConfig({
      ...production,
      LLM_BASE_URL: 'https://api.openai.com/v1/',
      LLM_MODEL: 'gpt-4o-mini',
      LLM_API_KEY: 'sk-test',
      LLM_SYSTEM_PROMPT: 'Be brief.',
      LLM_TIMEOUT_MS: '45000',
      LLM_MAX_CONCURRENT_REPLIES: '8',
      LLM_MAX_REPLIES_PER_ORGANIZATION: '3',
      LLM_MAX_REPLIES_PER_PERSON: '2',
      LLM_MAX_OUTPUT_TOKENS: '1000',
      LLM_MAX_REPLY_SECONDS: '60',
      LLM_CONTEXT_MAX_MESSAGES: '10',
      LLM_CONTEXT_MAX_CHARACTERS: '20000',
      LLM_REPLY_LEASE_SECONDS: '10',
    });
    expect(config.assistant).toEqual({
      mode: 'on',
      model: { kind: 'openai-compatible', baseUrl: 'https://api.openai.com/v1', apiKey: 'sk-test', model: 'gpt-4o-mini' },
      systemPrompt: 'Be brief.',
      timeoutMs: 45_000,
      maxConcurrentReplies: 8,
      maxRepliesPerOrganization: 3,
      maxRepliesPerPerson: 2,
      maxOutputTokens: 1_000,
      maxReplyMs: 60_000,
      context: { maxMessages: 10, maxCharacters: 20_000 },
      leaseMs: 10_000,
    });
    // Ollama needs no key.
    expect(loadConfig({ LLM_BASE_URL: 'http://127.0.0.1:11434/v1', LLM_MODEL: 'llama3.2' }).assistant).toMatchObject({
      model: { kind: 'openai-compatible', apiKey: undefined, model: 'llama3.2' },
    });
  });

  it('never runs the demo responder in production: it asks for LLM_BASE_URL, or ASSISTANT_REPLIES=off', () => {
    expect(() => loadConfig(production)).toThrow(
      /^Invalid configuration: LLM_BASE_URL and LLM_MODEL are required when NODE_ENV=production .* or set ASSISTANT_REPLIES=off$/,
    );
    expect(loadConfig({ ...production, ASSISTANT_REPLIES: 'off' }).assistant).toEqual({ mode: 'off', leaseMs: 30_000 });
  });

  it.each([
    [{ LLM_BASE_URL: 'https://api.openai.com/v1' }, /^Invalid configuration: LLM_MODEL is required with LLM_BASE_URL/],
    [{ LLM_MODEL: 'gpt-4o-mini' }, /^Invalid configuration: LLM_MODEL needs LLM_BASE_URL/],
    [{ LLM_API_KEY: 'sk-test' }, /^Invalid configuration: LLM_API_KEY needs LLM_BASE_URL/],
    [{ LLM_BASE_URL: 'ftp://models.example' }, /^Invalid configuration: LLM_BASE_URL must be an http\(s\) URL$/],
    [{ LLM_TIMEOUT_MS: '10' }, /^Invalid configuration: LLM_TIMEOUT_MS must be a whole number from 1000 to 600000$/],
    [{ ASSISTANT_REPLIES: 'maybe' }, /^Invalid configuration: ASSISTANT_REPLIES must be on or off$/],
  ])('refuses %o in one line naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });
});
