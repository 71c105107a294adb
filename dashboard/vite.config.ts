/// <reference types="vitest/config" />
// The dashboard's build. The TypeScript generated from proto/ lives outside this package,
// in ../gen/ts (`make gen`); `@gen/...` points there, and `dedupe` makes its imports of
// @bufbuild/protobuf resolve to this package's copy (gen/ has no node_modules).
// A warning fails the build (issue: "a build with no warnings").
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import react from "@vitejs/plugin-react";
import { defineConfig, type Plugin } from "vite";

const gen = fileURLToPath(new URL("../gen/ts", import.meta.url));

/**
 * Writes `<file>.gz` beside every text asset after the build, so Envoy serves the
 * compressed copy to clients that accept gzip (the edge answers static files with
 * direct responses, which its compressor filter does not touch). zlib from Node itself:
 * no plugin needed for ten lines.
 */
function precompress(): Plugin {
  return {
    name: "agentforge-precompress",
    apply: "build",
    closeBundle() {
      const out = fileURLToPath(new URL("./dist", import.meta.url));
      const walk = (dir: string): string[] =>
        readdirSync(dir).flatMap((n) => {
          const p = join(dir, n);
          return statSync(p).isDirectory() ? walk(p) : [p];
        });
      for (const file of walk(out)) {
        if (/\.(js|css|html|svg|json|txt)$/.test(file)) {
          writeFileSync(`${file}.gz`, gzipSync(readFileSync(file), { level: 9 }));
        }
      }
    },
  };
}

export default defineConfig({
  plugins: [react(), precompress()],
  resolve: {
    alias: { "@gen": gen },
    dedupe: ["@bufbuild/protobuf"],
  },
  server: { fs: { allow: [".", gen] } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    reportCompressedSize: false,
    rollupOptions: {
      onwarn(warning) {
        throw new Error(`build warning: ${warning.message}`);
      },
    },
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
  },
});
