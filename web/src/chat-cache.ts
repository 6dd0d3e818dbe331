import type { InfiniteData, QueryClient } from '@tanstack/react-query';
import type { ChatEvent } from '../../client/index.js';
import type { Message } from './api.js';

export const MESSAGES_PAGE = 30;

type MessagePages = InfiniteData<{ items: Message[]; nextCursor: string | null }, string | null>;

/**
 * Applies a message to a conversation's loaded pages: replaced where it is (unless `keep`: a
 * call's answer may be older than the events that followed it), else added at the end of the
 * newest page. Pages come newest first, each oldest first.
 */
export function upsertMessage(data: MessagePages | undefined, message: Message, { keep = false } = {}): MessagePages | undefined {
  if (!data) return data;
  let found = false;
  const updated = withMessage(data, message.id, (item) => {
    found = true;
    return keep ? item : message;
  });
  const [newest, ...older] = updated.pages;
  if (found || !newest) return updated;
  return { ...updated, pages: [{ ...newest, items: [...newest.items, message] }, ...older] };
}

/** Appends a reply's next piece of text to its message, where it is loaded. */
export function appendToMessage(data: MessagePages | undefined, messageId: string, text: string): MessagePages | undefined {
  return data && withMessage(data, messageId, (item) => ({ ...item, content: item.content + text }));
}

/** The pages with the message `id`, where loaded, replaced by what `change` makes of it. */
function withMessage(data: MessagePages, id: string, change: (message: Message) => Message): MessagePages {
  return {
    ...data,
    pages: data.pages.map((page) => ({ ...page, items: page.items.map((item) => (item.id === id ? change(item) : item)) })),
  };
}

/** What a `chat.events` event changes in the query cache. */
export function applyChatEvent(
  queryClient: QueryClient,
  keys: {
    sessions: readonly unknown[];
    activeSession: readonly unknown[];
    messagesOf: (sessionId: string) => readonly unknown[];
    all: readonly unknown[];
  },
  event: ChatEvent,
) {
  switch (event.type) {
    case 'session.created':
    case 'session.updated':
      void queryClient.invalidateQueries({ queryKey: keys.sessions });
      return;
    case 'session.deleted':
      // Its messages go, and the active session may have been this one.
      queryClient.removeQueries({ queryKey: keys.messagesOf(event.sessionId) });
      void queryClient.invalidateQueries({ queryKey: keys.sessions });
      void queryClient.invalidateQueries({ queryKey: keys.activeSession });
      return;
    case 'message.created':
    case 'reply.completed':
    case 'reply.failed':
      queryClient.setQueryData<MessagePages>(keys.messagesOf(event.message.sessionId), (data) => upsertMessage(data, event.message));
      return;
    case 'reply.delta':
      queryClient.setQueryData<MessagePages>(keys.messagesOf(event.sessionId), (data) => appendToMessage(data, event.messageId, event.text));
      return;
    case 'resync':
      void queryClient.invalidateQueries({ queryKey: keys.all });
  }
}
