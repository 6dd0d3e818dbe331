import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';
import { localSignIn } from './local-sign-in.js';

// `npm run web`: the page on http://localhost:5173. Without VITE_API_URL it calls `/trpc` on its own
// origin, which this dev server passes to the API (`API_URL`, default that of `npm start`); with
// VITE_API_URL it calls the API across origins (the API's CORS_ORIGINS must list the page's).
export default defineConfig(({ command }) => ({
  root: import.meta.dirname,
  // "Sign in as" exists only while the dev server serves the page: never in a build, whatever NODE_ENV says.
  define: { __LOCAL_SIGN_IN__: JSON.stringify(command === 'serve') },
  envDir: import.meta.dirname,
  plugins: [react(), localSignIn()],
  server: {
    port: 5173,
    proxy: { '/trpc': process.env.API_URL ?? 'http://127.0.0.1:3000' },
  },
  // Frontegg's SDK, loaded only when VITE_FRONTEGG_* are set, is a chunk of about 700 kB.
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 800 },
}));
