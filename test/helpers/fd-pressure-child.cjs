"use strict";
/**
 * Child process of test/integration/device-fault.test.ts, run under a low file descriptor limit: opens
 * the built Device (dist/) on the token SOFTHSM2_CONF names, creates a domain key and marks it
 * essential as the daemon does, takes every free descriptor, tries the device, gives them back and
 * tries again. Prints one JSON line with what each step answered.
 *
 *   node fd-pressure-child.cjs <dist dir> <token label> <pin file>
 */
const fs = require("node:fs");
const path = require("node:path");

const [distDir, label, pinFile] = process.argv.slice(2);
const { Device } = require(path.join(distDir, "src/pkcs11"));
const { freeFds } = require(path.join(distDir, "src/grpc/fd-budget"));

/** What a call answered: "ok", or its code and whether it is marked transient. */
async function outcome(fn) {
  try {
    const v = await fn();
    return v === undefined ? "ok" : v;
  } catch (e) {
    return { code: e.code, transient: e.transient === true, message: e.message };
  }
}

(async () => {
  const logs = [];
  const device = await Device.open({
    module: process.env.SOFTHSM2_MODULE || "/usr/lib/softhsm/libsofthsm2.so",
    tokenLabel: label,
    pin: fs.readFileSync(pinFile, "utf8").trim(),
    poolSize: 2,
    tokenObjects: true,
    sessionCopies: true,
    log: (m) => logs.push(m),
    freeFds,
  });
  await device.ensureDomainKey("hsmd-domain-fd", true);
  device.markEssential("hsmd-domain-fd", "secret");
  const aes = { type: "aes", bits: 256 };
  // A key's creation as KeyService makes it: a transient session object, sealed into its kept token object.
  const create = async (id) => {
    await device.generate(id, aes, ["encrypt", "decrypt"]);
    await device.sealForRecord(id, aes, ["encrypt", "decrypt"], "hsmd-domain-fd");
  };
  const out = { before: await outcome(() => create("k-before")) };

  freeFds(); // reads the limit while it can
  const held = [];
  try {
    for (;;) held.push(fs.openSync("/dev/null", "r"));
  } catch (e) {
    out.exhausted = e.code;
  }
  out.underGenerate = await outcome(() => create("k-under"));
  // A call that needs the domain key once the handle cache is gone (as after a session recovery).
  out.underDomainUse = await outcome(() => {
    device.dropHandleCache();
    return device.secretLength("k-before", "hsmd-domain-fd").then(() => undefined);
  });
  out.underFaulty = device.faults.faulty;
  out.underCheck = await outcome(() => device.faults.check());
  for (const fd of held) fs.closeSync(fd);

  out.afterCheck = await outcome(() => device.faults.check());
  out.afterFaulty = device.faults.faulty;
  out.afterGenerate = await outcome(() => create("k-after"));
  out.afterDomain = await outcome(() => device.has("hsmd-domain-fd", "secret"));
  out.afterOldKey = await outcome(() => device.has("k-before", "secret"));
  out.logs = logs;
  await device.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
})().catch((e) => {
  process.stdout.write(`${JSON.stringify({ crashed: String(e?.stack) })}\n`);
  process.exit(1);
});
