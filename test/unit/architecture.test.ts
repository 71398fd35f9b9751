/**
 * The layer rules of docs/ARCHITECTURE.md, checked on the import graph of every hand-written file
 * under src/ (src/gen is generated and exempt). Each rule is a pure function over the parsed graph;
 * the first block proves each one catches a violation, the second runs them on the real tree.
 */
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const SRC = resolve(__dirname, "../../src");

/** One import: the importing file and the imported module, both relative to src/ when local. */
interface Edge {
  from: string;
  /** `pkg:<name>` for a package or node builtin, else the resolved path under src/ (e.g. `keys/index.ts`). */
  to: string;
}

/** The domain: transport-free, unit-testable (DESIGN.md principle 6). */
const DOMAIN = ["keys", "users", "audit", "cluster", "access", "errors"];
/** The composition root: the daemon and the process entry points at the top of src/. */
const ROOT = ["daemon", "main", "listen-check", "officer-unlock"];

/** The area a file under src/ belongs to: its top folder, or for a top-level file its name (the root files share one area). */
function area(file: string): string {
  const [head, ...rest] = file.split("/");
  const name = rest.length === 0 ? head.replace(/\.ts$/, "") : head;
  return ROOT.includes(name) ? "root" : name;
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) return relative(SRC, p) === "gen" ? [] : walk(p);
    return n.endsWith(".ts") && !n.endsWith(".d.ts") ? [p] : [];
  });
}

/** Resolves a relative specifier the way tsc does for this project: `x.ts`, else `x/index.ts`. */
function resolveLocal(fromAbs: string, spec: string): string {
  const base = resolve(dirname(fromAbs), spec);
  for (const c of [`${base}.ts`, join(base, "index.ts"), base]) {
    try {
      if (statSync(c).isFile()) return relative(SRC, c);
    } catch {
      // not this candidate
    }
  }
  // Generated code before `npm run gen`, or a file that does not exist: keep the path, rules still see its area.
  return relative(SRC, base);
}

/** Every import, export-from, require() and import() of every hand-written file under src/. */
function importGraph(): Edge[] {
  return walk(SRC).flatMap((abs) => {
    const from = relative(SRC, abs);
    const info = ts.preProcessFile(readFileSync(abs, "utf8"), true, true);
    return info.importedFiles.map((f) => ({ from, to: f.fileName.startsWith(".") ? resolveLocal(abs, f.fileName) : `pkg:${f.fileName}` }));
  });
}

const show = (e: Edge) => `${e.from} -> ${e.to.replace(/^pkg:/, "")}`;
const pkg = (e: Edge) => (e.to.startsWith("pkg:") ? e.to.slice(4) : undefined);

/** pkcs11js and graphene-pk11 (the C boundary) only inside src/pkcs11/. */
function deviceBindingOutsidePkcs11(edges: Edge[]): string[] {
  return edges.filter((e) => ["pkcs11js", "graphene-pk11"].includes(pkg(e) ?? "") && area(e.from) !== "pkcs11").map(show);
}

/** The wire (src/gen, @grpc/*) only in grpc/, sdk/, cli/, the root, and store/etcd* (etcd3's gRPC types). */
function wireOutsideTransport(edges: Edge[]): string[] {
  const allowed = (f: string) => ["grpc", "sdk", "cli", "root"].includes(area(f)) || /^store\/etcd[^/]*\.ts$/.test(f);
  return edges.filter((e) => (area(e.to) === "gen" || (pkg(e) ?? "").startsWith("@grpc/")) && !allowed(e.from)).map(show);
}

/** The domain never imports src/gen or @grpc/* at all (the stricter half of the wire rule, stated on its own). */
function wireInDomain(edges: Edge[]): string[] {
  return edges.filter((e) => DOMAIN.includes(area(e.from)) && (area(e.to) === "gen" || (pkg(e) ?? "").startsWith("@grpc/"))).map(show);
}

/** fastify only in src/http/. */
function fastifyOutsideHttp(edges: Edge[]): string[] {
  return edges.filter((e) => (pkg(e) ?? "").split("/")[0].replace(/^@fastify$/, "fastify") === "fastify" && area(e.from) !== "http").map(show);
}

/** The domain never imports a transport or the composition root. */
function domainImportsTransport(edges: Edge[]): string[] {
  return edges.filter((e) => !pkg(e) && DOMAIN.includes(area(e.from)) && ["grpc", "http", "sdk", "cli", "root"].includes(area(e.to))).map(show);
}

/** Another folder is imported only through its index.ts (top-level files such as errors.ts are imported as they are). */
function deepImports(edges: Edge[]): string[] {
  return edges
    .filter((e) => {
      if (pkg(e) || area(e.to) === area(e.from)) return false;
      const parts = e.to.split("/");
      if (parts.length === 1 || area(e.to) === "gen") return false;
      return !(parts.length === 2 && parts[1] === "index.ts");
    })
    .map(show);
}

/** Cycles between areas (strongly connected components of the area graph with more than one area). */
function areaCycles(edges: Edge[]): string[] {
  const g = new Map<string, Set<string>>();
  for (const e of edges) {
    if (pkg(e)) continue;
    const a = area(e.from);
    const b = area(e.to);
    if (a === b) continue;
    if (!g.has(a)) g.set(a, new Set());
    if (!g.has(b)) g.set(b, new Set());
    g.get(a)!.add(b);
  }
  // Tarjan's algorithm.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) {
        const members = new Set(scc);
        const via = edges.filter((e) => !pkg(e) && members.has(area(e.from)) && members.has(area(e.to)) && area(e.from) !== area(e.to)).map(show);
        out.push(`cycle ${scc.sort().join(" <-> ")}: ${via.join(", ")}`);
      }
    }
  };
  for (const v of [...g.keys()].sort()) if (!index.has(v)) visit(v);
  return out;
}

describe("the rules catch what they forbid", () => {
  const e = (from: string, to: string): Edge => ({ from, to });
  it("device bindings", () => {
    expect(deviceBindingOutsidePkcs11([e("keys/service.ts", "pkg:pkcs11js"), e("pkcs11/module.ts", "pkg:pkcs11js")])).toEqual(["keys/service.ts -> pkcs11js"]);
  });
  it("the wire", () => {
    const edges = [
      e("errors.ts", "pkg:@grpc/grpc-js"),
      e("keys/record.ts", "gen/hsm/v1/hsm.ts"),
      e("grpc/server.ts", "gen/hsm/v1/hsm.ts"),
      e("store/etcd.ts", "pkg:@grpc/grpc-js"),
      e("store/embedded.ts", "pkg:@grpc/grpc-js"),
    ];
    expect(wireOutsideTransport(edges)).toEqual(["errors.ts -> @grpc/grpc-js", "keys/record.ts -> gen/hsm/v1/hsm.ts", "store/embedded.ts -> @grpc/grpc-js"]);
    expect(wireInDomain(edges)).toEqual(["errors.ts -> @grpc/grpc-js", "keys/record.ts -> gen/hsm/v1/hsm.ts"]);
  });
  it("fastify", () => {
    expect(fastifyOutsideHttp([e("root/x.ts", "pkg:fastify"), e("grpc/a.ts", "pkg:@fastify/cors"), e("http/app.ts", "pkg:fastify")])).toEqual(["root/x.ts -> fastify", "grpc/a.ts -> @fastify/cors"]);
  });
  it("the domain and the transports", () => {
    expect(domainImportsTransport([e("users/service.ts", "grpc/index.ts"), e("errors.ts", "daemon.ts"), e("grpc/server.ts", "users/index.ts")])).toEqual([
      "users/service.ts -> grpc/index.ts",
      "errors.ts -> daemon.ts",
    ]);
  });
  it("deep imports", () => {
    expect(
      deepImports([
        e("keys/service.ts", "pkcs11/device.ts"),
        e("keys/service.ts", "pkcs11/index.ts"),
        e("keys/service.ts", "errors.ts"),
        e("keys/a.ts", "keys/b.ts"),
        e("daemon/daemon.ts", "daemon/open.ts"),
        e("main.ts", "daemon.ts"),
      ]),
    ).toEqual(["keys/service.ts -> pkcs11/device.ts"]);
  });
  it("cycles", () => {
    expect(areaCycles([e("keys/a.ts", "pkcs11/index.ts"), e("pkcs11/b.ts", "keys/index.ts"), e("grpc/c.ts", "keys/index.ts")])).toEqual([
      "cycle keys <-> pkcs11: keys/a.ts -> pkcs11/index.ts, pkcs11/b.ts -> keys/index.ts",
    ]);
    expect(areaCycles([e("grpc/c.ts", "keys/index.ts"), e("keys/a.ts", "pkcs11/index.ts")])).toEqual([]);
  });
  it("the root files share one area", () => {
    expect([area("daemon.ts"), area("daemon/open.ts"), area("main.ts"), area("errors.ts"), area("keys/service.ts")]).toEqual(["root", "root", "root", "errors", "keys"]);
  });
});

describe("src/ keeps the layer rules (docs/ARCHITECTURE.md)", () => {
  const edges = importGraph();
  it("reads the real import graph", () => {
    // A parser that found nothing would pass every rule below.
    expect(edges.length).toBeGreaterThan(200);
    expect(edges).toContainEqual({ from: "daemon/daemon.ts", to: "keys/index.ts" });
    expect(edges).toContainEqual({ from: "pkcs11/templates.ts", to: "pkg:pkcs11js" });
  });
  it("pkcs11js and graphene-pk11 only inside src/pkcs11/", () => {
    expect(deviceBindingOutsidePkcs11(edges)).toEqual([]);
  });
  it("src/gen and @grpc/* only in grpc/, sdk/, cli/, the daemon and store/etcd*", () => {
    expect(wireOutsideTransport(edges)).toEqual([]);
  });
  it("the domain (keys, users, audit, cluster, access, errors.ts) imports neither src/gen nor @grpc/*", () => {
    expect(wireInDomain(edges)).toEqual([]);
  });
  it("fastify only in src/http/", () => {
    expect(fastifyOutsideHttp(edges)).toEqual([]);
  });
  it("the domain never imports grpc/, http/, sdk/, cli/ or the daemon", () => {
    expect(domainImportsTransport(edges)).toEqual([]);
  });
  it("another folder only through its index.ts", () => {
    expect(deepImports(edges)).toEqual([]);
  });
  it("no import cycle between folders", () => {
    expect(areaCycles(edges)).toEqual([]);
  });
});
