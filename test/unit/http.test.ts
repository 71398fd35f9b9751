import { afterEach, describe, expect, it, vi } from "vitest";
import type { FastifyInstance } from "fastify";
import { Code, HsmError } from "../../src/errors";
import { buildAdminApp, type AdminDeps, type ReadinessCheck } from "../../src/http";
import { Metrics } from "../../src/metrics";

const apps: FastifyInstance[] = [];

/** An admin app over fake deps; every field can be overridden. Closed after each test. */
function build(overrides: Partial<AdminDeps> = {}): { app: FastifyInstance; deps: AdminDeps } {
  const deps: AdminDeps = {
    metrics: new Metrics({ defaultMetrics: false }),
    readiness: async () => [
      { name: "device_session", ok: true },
      { name: "store_writable", ok: true },
    ],
    status: async () => ({ node: { id: "n1" }, keys: 3 }),
    ...overrides,
  };
  const app = buildAdminApp(deps);
  apps.push(app);
  return { app, deps };
}

afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

describe("buildAdminApp", () => {
  it("does not listen", async () => {
    const { app } = build();
    await app.ready();
    expect(app.server.listening).toBe(false);
  });

  describe("GET /healthz", () => {
    it("answers 200 ok without consulting any dependency", async () => {
      const readiness = vi.fn(async () => {
        throw new Error("device gone");
      });
      const status = vi.fn(async () => {
        throw new Error("device gone");
      });
      const { app } = build({ readiness, status });
      const res = await app.inject({ method: "GET", url: "/healthz" });
      expect(res.statusCode).toBe(200);
      expect(res.headers["content-type"]).toMatch(/^application\/json/);
      expect(res.json()).toEqual({ status: "ok" });
      expect(readiness).not.toHaveBeenCalled();
      expect(status).not.toHaveBeenCalled();
    });

    it("answers HEAD too", async () => {
      const { app } = build();
      const res = await app.inject({ method: "HEAD", url: "/healthz" });
      expect(res.statusCode).toBe(200);
    });
  });

  describe("GET /readyz", () => {
    it("is 200 with the checks when every check passes", async () => {
      const { app } = build();
      const res = await app.inject({ method: "GET", url: "/readyz" });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({
        ready: true,
        checks: [
          { name: "device_session", ok: true },
          { name: "store_writable", ok: true },
        ],
      });
    });

    it("is 503 with every check, failures included, when one fails", async () => {
      const checks: ReadinessCheck[] = [
        { name: "device_session", ok: true },
        { name: "store_writable", ok: false, detail: "state store is not writable" },
        { name: "domain_key", ok: true },
      ];
      const { app } = build({ readiness: async () => checks });
      const res = await app.inject({ method: "GET", url: "/readyz" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ ready: false, checks });
    });

    it("follows the checks from one request to the next", async () => {
      let ok = false;
      const { app } = build({ readiness: async () => [{ name: "domain_key", ok }] });
      expect((await app.inject({ method: "GET", url: "/readyz" })).statusCode).toBe(503);
      ok = true;
      expect((await app.inject({ method: "GET", url: "/readyz" })).statusCode).toBe(200);
    });

    it("is 503 with the error message when readiness() throws, and the app keeps serving", async () => {
      const { app } = build({
        readiness: async () => {
          throw new Error("pool closed");
        },
      });
      const res = await app.inject({ method: "GET", url: "/readyz" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ ready: false, checks: [], error: "pool closed" });
      expect((await app.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
    });

    it("is 503 when readiness() throws synchronously or rejects with a non-Error", async () => {
      const { app } = build({
        readiness: (() => {
          throw new HsmError(Code.Unavailable, "store unavailable");
        }) as AdminDeps["readiness"],
      });
      const res = await app.inject({ method: "GET", url: "/readyz" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({ ready: false, error: "store unavailable" });

      const { app: app2 } = build({ readiness: () => Promise.reject("nope") });
      const res2 = await app2.inject({ method: "GET", url: "/readyz" });
      expect(res2.statusCode).toBe(503);
      expect(res2.json()).toMatchObject({ ready: false, error: "nope" });
    });
  });

  describe("GET /metrics", () => {
    it("serves the registry's Prometheus text with its content type", async () => {
      const { app, deps } = build();
      deps.metrics.observeRpc("/hsm.v1.CryptoService/Sign", "OK", 0.002);
      deps.metrics.setPoolSource(() => ({ size: 4, busy: 1, waiting: 2 }));
      const res = await app.inject({ method: "GET", url: "/metrics" });
      expect(res.statusCode).toBe(200);
      expect(res.headers["content-type"]).toBe(deps.metrics.registry.contentType);
      expect(res.body).toContain('hsmd_grpc_requests_total{method="/hsm.v1.CryptoService/Sign",code="OK"} 1');
      expect(res.body).toContain('hsmd_pool_sessions{state="idle"} 3');
      expect(res.body).toContain("hsmd_pool_waiting 2");
    });

    it("maps a failing render to a bare 500", async () => {
      const { app, deps } = build();
      vi.spyOn(deps.metrics, "render").mockRejectedValue(new Error("secret path /var/lib/hsmd"));
      const res = await app.inject({ method: "GET", url: "/metrics" });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({ code: "INTERNAL", message: "internal error" });
      expect(res.body).not.toContain("secret");
    });
  });

  describe("GET /v1/status", () => {
    it("answers the status object as JSON", async () => {
      const { app } = build();
      const res = await app.inject({ method: "GET", url: "/v1/status" });
      expect(res.statusCode).toBe(200);
      expect(res.headers["content-type"]).toMatch(/^application\/json/);
      expect(res.json()).toEqual({ node: { id: "n1" }, keys: 3 });
    });

    it("is 503 UNAVAILABLE without details when status() throws an unknown error", async () => {
      const log = vi.fn();
      const { app } = build({
        log,
        status: async () => {
          throw new Error("CKR_DEVICE_ERROR at /usr/lib/softhsm/libsofthsm2.so");
        },
      });
      const res = await app.inject({ method: "GET", url: "/v1/status" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ code: "UNAVAILABLE", message: "status unavailable" });
      expect(res.body).not.toContain("CKR");
      expect(log).toHaveBeenCalledWith(expect.stringContaining("CKR_DEVICE_ERROR"));
    });

    it("is 503 with the HsmError's code and message when status() throws one", async () => {
      const { app } = build({
        status: async () => {
          throw new HsmError(Code.FailedPrecondition, "token not initialized");
        },
      });
      const res = await app.inject({ method: "GET", url: "/v1/status" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ code: "FAILED_PRECONDITION", message: "token not initialized" });
    });
  });

  describe("unknown routes", () => {
    it("answer 404 JSON NOT_FOUND", async () => {
      const { app } = build();
      const res = await app.inject({ method: "GET", url: "/v2/nothing?x=1" });
      expect(res.statusCode).toBe(404);
      expect(res.headers["content-type"]).toMatch(/^application\/json/);
      expect(res.json()).toEqual({ code: "NOT_FOUND", message: "no route GET /v2/nothing?x=1" });
    });

    it("include a wrong method on a known path", async () => {
      const { app } = build();
      const res = await app.inject({ method: "POST", url: "/healthz" });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({ code: "NOT_FOUND" });
    });

    it("echo at most a bounded part of the URL", async () => {
      const { app } = build();
      const res = await app.inject({ method: "GET", url: `/${"a".repeat(5000)}` });
      expect(res.statusCode).toBe(404);
      expect(res.json().message.length).toBeLessThan(300);
    });
  });

  describe("error handler", () => {
    it("maps an HsmError to the HTTP status of its code", async () => {
      const { app } = build();
      const cases: [Code, number][] = [
        [Code.InvalidArgument, 400],
        [Code.NotFound, 404],
        [Code.PermissionDenied, 403],
        [Code.ResourceExhausted, 429],
        [Code.Unavailable, 503],
      ];
      for (const [code] of cases) {
        app.get(`/boom/${code}`, async () => {
          throw new HsmError(code, `failed with ${code}`);
        });
      }
      for (const [code, status] of cases) {
        const res = await app.inject({ method: "GET", url: `/boom/${code}` });
        expect(res.statusCode).toBe(status);
        expect(res.json()).toEqual({ code, message: `failed with ${code}` });
      }
    });

    it("maps anything else to a bare 500 and reports it to the log", async () => {
      const log = vi.fn();
      const { app } = build({ log });
      app.get("/boom", async () => {
        const e = new Error("pin 1234 rejected") as Error & { code: number };
        e.code = 160; // a pkcs11js error carries CKR_PIN_INCORRECT in `code`
        throw e;
      });
      const res = await app.inject({ method: "GET", url: "/boom" });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({ code: "INTERNAL", message: "internal error" });
      expect(res.body).not.toContain("1234");
      expect(log).toHaveBeenCalledWith(expect.stringContaining("pin 1234 rejected"));
    });

    it("does not let an error's own statusCode through unless fastify raised it", async () => {
      const { app } = build();
      app.get("/boom", async () => {
        throw Object.assign(new Error("details"), { statusCode: 418 });
      });
      const res = await app.inject({ method: "GET", url: "/boom" });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({ code: "INTERNAL", message: "internal error" });
    });

    it("answers fastify's own client errors with their 4xx status as JSON", async () => {
      const { app } = build();
      app.post("/echo", async (req) => req.body);
      const res = await app.inject({
        method: "POST",
        url: "/echo",
        payload: "{not json",
        headers: { "content-type": "application/json" },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ code: "INVALID_ARGUMENT" });

      const res2 = await app.inject({
        method: "POST",
        url: "/echo",
        payload: "x",
        headers: { "content-type": "application/x-unknown" },
      });
      expect(res2.statusCode).toBe(415);
      expect(res2.json()).toMatchObject({ code: "INVALID_ARGUMENT" });
    });
  });
});
