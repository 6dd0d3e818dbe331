import { createTRPCContext } from '@trpc/tanstack-react-query';
import type { TRPCClientError } from '@trpc/client';
import type { AppRouter, RouterOutputs } from '../../client/index.js';

export const { TRPCProvider, useTRPC } = createTRPCContext<AppRouter>();

export type Session = RouterOutputs['chat']['listSessions']['items'][number];
export type Message = RouterOutputs['chat']['listMessages']['items'][number];
export type ApiError = TRPCClientError<AppRouter>;

/** The API's tRPC endpoint: VITE_API_URL's across origins, else this page's own (the dev server passes it on). */
export const API_URL = `${(import.meta.env.VITE_API_URL ?? window.location.origin).replace(/\/+$/, '')}/trpc`;

/** The tRPC code of a failed call, or undefined for one that got no answer. */
export const codeOf = (error: unknown) => (error as ApiError | null)?.data?.code;
