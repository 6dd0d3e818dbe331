export { type AppRouter, appRouter, createCaller } from './root.js';
export { createInnerContext, authenticate, type Context, type ServerDeps } from './context.js';
