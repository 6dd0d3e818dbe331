import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

const WEB = 'http://localhost:5173';

let app: TestApp;
let allowing: Awaited<ReturnType<typeof startHttpServer>>;
let closed: Awaited<ReturnType<typeof startHttpServer>>;
beforeAll(async () => {
  app = await startTestApp();
  allowing = await startHttpServer(app, { corsOrigins: [WEB, 'https://chat.example.com'] });
  closed = await startHttpServer(app);
});
afterAll(async () => {
  await Promise.all([allowing?.close(), closed?.close()]);
  await app?.close();
});

describe('CORS on /trpc', () => {
  it('lets an allowed origin read a call’s answer and its request id', async () => {
    const token = await app.idp.mintToken();
    const response = await fetch(`${allowing.url}/trpc/me`, { headers: { origin: WEB, authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    expect(response.headers.get('access-control-allow-origin')).toBe(WEB);
    expect(response.headers.get('access-control-expose-headers')).toBe('x-request-id');
  });

  it('gives a refused origin no CORS headers, so its browser withholds the answer', async () => {
    for (const origin of ['http://localhost:5174', 'https://chat.example.com.evil.test', 'null']) {
      const response = await fetch(`${allowing.url}/trpc/me`, { headers: { origin } });
      expect(response.headers.get('access-control-allow-origin')).toBeNull();
    }
  });

  it('answers a preflight: the methods, Authorization, Content-Type and Last-Event-ID (an EventSource reconnecting)', async () => {
    const response = await fetch(`${allowing.url}/trpc/chat.sendMessage?batch=1`, {
      method: 'OPTIONS',
      headers: { origin: WEB, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-origin')).toBe(WEB);
    expect(response.headers.get('access-control-allow-methods')).toBe('GET,POST');
    expect(response.headers.get('access-control-allow-headers')).toBe('Authorization,Content-Type,Last-Event-ID');
    expect(response.headers.get('access-control-max-age')).toBe('600');
  });

  it('lets a subscription stream (Server-Sent Events) cross origins', async () => {
    const token = await app.idp.mintToken();
    const controller = new AbortController();
    const response = await fetch(`${allowing.url}/trpc/chat.events`, {
      headers: { origin: WEB, authorization: `Bearer ${token}`, accept: 'text/event-stream' },
      signal: controller.signal,
    });
    expect(response.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(response.headers.get('access-control-allow-origin')).toBe(WEB);
    controller.abort();
  });

  it('allows no cross-origin access at all without CORS_ORIGINS: no headers, and a preflight gets nothing to go on', async () => {
    const token = await app.idp.mintToken();
    const response = await fetch(`${closed.url}/trpc/me`, { headers: { origin: WEB, authorization: `Bearer ${token}` } });
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
    const preflight = await fetch(`${closed.url}/trpc/me`, {
      method: 'OPTIONS',
      headers: { origin: WEB, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' },
    });
    expect(preflight.headers.get('access-control-allow-origin')).toBeNull();
    expect(preflight.headers.get('access-control-allow-headers')).toBeNull();
  });
});
