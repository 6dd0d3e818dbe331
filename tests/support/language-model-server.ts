import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** A chat-completions request as the provider received it. */
export interface ProviderRequest {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: {
    model: string;
    messages: { role: string; content: string }[];
    stream?: boolean;
    stream_options?: { include_usage?: boolean };
    [key: string]: unknown;
  };
}

/**
 * The provider's side of one request, driven by the test: `text` sends a chunk (the response's
 * headers go with the first), `finish` ends it as OpenAI does (a `finish_reason`, a usage chunk,
 * `[DONE]`), `refuse` answers an error status, `cut` drops the connection mid-stream, and doing
 * nothing is a provider that hangs.
 */
export interface ProviderReply {
  /** Resolves with the request once it has arrived. */
  request: Promise<ProviderRequest>;
  text(delta: string): void;
  finish(options?: { usage?: { input: number; output: number }; finishReason?: string }): void;
  refuse(status: number, body?: unknown): void;
  /** Drops the connection. */
  cut(): void;
  /** Ends the response as if complete, but without a `finish_reason` or `[DONE]`. */
  end(): void;
  /** Resolves when the client has gone (it closed the connection, or the response ended). */
  closed: Promise<void>;
}

/**
 * A real HTTP server speaking the OpenAI chat-completions streaming protocol (Server-Sent Events
 * of `chat.completion.chunk` objects, then `data: [DONE]`), as OpenAI, vLLM or Ollama do. Each
 * request is answered by the next reply the test took with `nextReply()`, or, when it took none,
 * streams `defaultText` word by word.
 */
export async function startLanguageModelServer({ defaultText = 'Hello from the test model.' } = {}) {
  const requests: ProviderRequest[] = [];
  const waiting: { reply: ProviderReply; arrive: (request: ProviderRequest, res: http.ServerResponse) => void }[] = [];
  let id = 0;

  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const request: ProviderRequest = { path: req.url ?? '', headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) };
    requests.push(request);
    const next = waiting.shift();
    if (next) return next.arrive(request, res);
    const reply = drive(res, request.body.model, `chatcmpl-${++id}`);
    for (const word of defaultText.split(/(?<= )/u)) reply.text(word);
    reply.finish({ usage: { input: 10, output: defaultText.split(' ').length } });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;

  return {
    /** What `LLM_BASE_URL` is set to. */
    baseUrl,
    requests,
    /** The reply to the next request that arrives, for the test to drive. */
    nextReply(): ProviderReply {
      let arrive!: (request: ProviderRequest, res: http.ServerResponse) => void;
      const arrived = new Promise<{ request: ProviderRequest; res: http.ServerResponse }>((resolve) => {
        arrive = (request, res) => resolve({ request, res });
      });
      const whenArrived = (act: (reply: ReturnType<typeof drive>) => void) => void arrived.then(({ request, res }) => act(drive(res, request.body.model, `chatcmpl-${++id}`)));
      const reply: ProviderReply = {
        request: arrived.then(({ request }) => request),
        text: (delta) => whenArrived((live) => live.text(delta)),
        finish: (options) => whenArrived((live) => live.finish(options)),
        refuse: (status, body) => whenArrived((live) => live.refuse(status, body)),
        cut: () => whenArrived((live) => live.cut()),
        end: () => whenArrived((live) => live.end()),
        closed: arrived.then(({ res }) => (res.closed ? undefined : once(res, 'close').then(() => undefined))),
      };
      waiting.push({ reply, arrive });
      return reply;
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

export type LanguageModelServer = Awaited<ReturnType<typeof startLanguageModelServer>>;

/** Answers one request on `res` in the protocol's words. */
function drive(res: http.ServerResponse, model: string, id: string): Pick<ProviderReply, 'text' | 'finish' | 'refuse' | 'cut' | 'end'> {
  const created = Math.floor(Date.now() / 1000);
  const send = (payload: unknown) => {
    if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`);
  };
  const chunk = (delta: Record<string, unknown>, finishReason: string | null = null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  });
  let first = true;
  return {
    text(delta) {
      send(chunk(first ? { role: 'assistant', content: delta } : { content: delta }));
      first = false;
    },
    finish({ usage, finishReason = 'stop' } = {}) {
      send(chunk({}, finishReason));
      if (usage) {
        send({
          id,
          object: 'chat.completion.chunk',
          created,
          model,
          choices: [],
          usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output },
        });
      }
      send('[DONE]');
      res.end();
    },
    refuse(status, body = { error: { message: `refused with ${status}`, type: 'server_error' } }) {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    },
    cut() {
      res.socket?.destroy();
    },
    end() {
      res.end();
    },
  };
}
