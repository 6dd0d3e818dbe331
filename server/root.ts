import { chatRouter } from './routers/chat.js';
import { me } from './routers/me.js';
import { orgRouter } from './routers/org.js';
import { createCallerFactory, router } from './trpc.js';

export const appRouter = router({
  me,
  org: orgRouter,
  chat: chatRouter,
});

export type AppRouter = typeof appRouter;

/** Calls procedures in-process with a context from `createInnerContext` (tests, scripts, jobs). */
export const createCaller = createCallerFactory(appRouter);
