import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import type { LanguageModelV3, LanguageModelV3Prompt, LanguageModelV3StreamPart } from '@ai-sdk/provider';

/** Where replies come from: an OpenAI-compatible chat-completions endpoint, or the demo responder. */
export type LanguageModelConfig =
  | { kind: 'openai-compatible'; baseUrl: string; apiKey: string | undefined; model: string }
  | { kind: 'demo' };

/** The name replies are stored and metered under. */
export const modelNameOf = (config: LanguageModelConfig) => (config.kind === 'demo' ? DEMO_MODEL_ID : config.model);

/**
 * The model object, built explicitly: given a bare model-id string, the AI SDK would send the
 * conversation to Vercel's AI gateway instead.
 */
export function createLanguageModel(config: LanguageModelConfig): LanguageModelV3 {
  if (config.kind === 'demo') return createDemoModel();
  const provider = createOpenAICompatible({
    name: 'llm',
    baseURL: config.baseUrl,
    apiKey: config.apiKey,
    // Sends `stream_options: { include_usage: true }`: the tokens come in the stream's last chunk.
    includeUsage: true,
  });
  return provider.chatModel(config.model);
}

const DEMO_MODEL_ID = 'demo';
const DEMO_WORD_MS = 40;

/**
 * Development's stand-in for a language model (no `LLM_BASE_URL`): streams a short reply word by
 * word that says it is a demo, so the server, its demo and its tests run offline. Never used
 * with `NODE_ENV=production` (the configuration refuses it).
 */
export function createDemoModel({ wordMs = DEMO_WORD_MS } = {}): LanguageModelV3 {
  const replyTo = (prompt: LanguageModelV3Prompt) => {
    const asked = lastUserText(prompt);
    const excerpt = asked.length > 60 ? `${asked.slice(0, 60)}…` : asked;
    return `This is the demo assistant, not a language model: set LLM_BASE_URL and LLM_MODEL to use one. You wrote “${excerpt}”.`;
  };
  const usage = (prompt: LanguageModelV3Prompt, text: string) => ({
    inputTokens: { total: countWords(JSON.stringify(prompt)), noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
    outputTokens: { total: countWords(text), text: undefined, reasoning: undefined },
  });
  const finishReason = { unified: 'stop' as const, raw: 'stop' };
  return {
    specificationVersion: 'v3',
    provider: 'demo',
    modelId: DEMO_MODEL_ID,
    supportedUrls: {},
    async doGenerate({ prompt }) {
      const text = replyTo(prompt);
      return { content: [{ type: 'text', text }], finishReason, usage: usage(prompt, text), warnings: [] };
    },
    async doStream({ prompt, abortSignal }) {
      const text = replyTo(prompt);
      const words = text.split(/(?<= )/u);
      let timer: NodeJS.Timeout | undefined;
      const stream = new ReadableStream<LanguageModelV3StreamPart>({
        start(controller) {
          controller.enqueue({ type: 'stream-start', warnings: [] });
          controller.enqueue({ type: 'text-start', id: '0' });
          const next = (index: number) => {
            if (index === words.length) {
              controller.enqueue({ type: 'text-end', id: '0' });
              controller.enqueue({ type: 'finish', finishReason, usage: usage(prompt, text) });
              controller.close();
              return;
            }
            controller.enqueue({ type: 'text-delta', id: '0', delta: words[index]! });
            timer = setTimeout(next, wordMs, index + 1);
          };
          abortSignal?.addEventListener('abort', () => {
            clearTimeout(timer);
            controller.error(abortSignal.reason);
          });
          timer = setTimeout(next, wordMs, 0);
        },
        cancel: () => clearTimeout(timer),
      });
      return { stream };
    },
  };
}

function lastUserText(prompt: LanguageModelV3Prompt): string {
  for (let index = prompt.length - 1; index >= 0; index--) {
    const message = prompt[index]!;
    if (message.role !== 'user') continue;
    return message.content
      .map((part) => (part.type === 'text' ? part.text : ''))
      .join(' ')
      .replace(/\s+/gu, ' ')
      .trim();
  }
  return '';
}

const countWords = (text: string) => text.split(/\s+/u).filter(Boolean).length;
