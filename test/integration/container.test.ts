// A real container on a real local cell, reached over SSH through the real
// agent: every hardening property of a new container is checked from inside
// it or from the cell, one assertion per property.
import assert from "node:assert/strict";

import { DROPPED_CAPABILITIES, CAPABILITY_NUMBERS } from "../../provider/src/agent/container/capabilities";
import type { ContainerObservation } from "../../provider/src/common/protocol";
import { cpuSharesForMemory, MAPPED_ROOT_ID } from "../../provider/src/common/resources";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { sessionFor, testImagePath } from "../helpers/session";

const MEMORY = 96 * 1024 * 1024;
const NAMESPACES = ["ipc", "mnt", "net", "pid", "uts", "user"];

// The probe prints one "key: value" section per property, then stays up so
// the cell side can be inspected while it runs.
const PROBE = [
  'for ns in ipc mnt net pid uts user; do echo "ns.$ns: $(readlink /proc/self/ns/$ns)"; done',
  'echo "uid_map: $(cat /proc/self/uid_map | tr -s " " | tr "\\n" ";")"',
  'echo "gid_map: $(cat /proc/self/gid_map | tr -s " " | tr "\\n" ";")"',
  'echo "root_mount: $(head -n 1 /proc/self/mountinfo)"',
  'echo "mount_count: $(wc -l < /proc/self/mountinfo)"',
  'echo "sys_mount: $(grep " /sys " /proc/self/mountinfo)"',
  'if echo probe > /proc/sys/kernel/hostname 2>/dev/null; then echo "proc_sys_write: ok"; else echo "proc_sys_write: denied"; fi',
  'if touch /sys/kernel/probe 2>/dev/null; then echo "sys_write: ok"; else echo "sys_write: denied"; fi',
  'grep -E "^(Cap|NoNewPrivs)" /proc/self/status | tr -d "\\t" | sed "s/:/: /"',
  'echo "hostname: $(hostname)"',
  'echo "cwd: $(pwd)"',
  'if [ -e /var/lib/cellfleet ]; then echo "cell_state_visible: yes"; else echo "cell_state_visible: no"; fi',
  'echo "lo: $(cat /sys/class/net/lo/operstate)"',
  'echo "interfaces: $(ls /sys/class/net | tr "\\n" " ")"',
  'touch /probe-file && echo "rootfs_write: ok"',
  'echo "done: yes"',
  "exec sleep 600",
].join("\n");

function parseProbe(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    const separator = line.indexOf(": ");
    if (separator > 0) values.set(line.slice(0, separator), line.slice(separator + 2).trim());
  }
  return values;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("container on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let digest: string;
  let container: ContainerObservation;
  let probe: Map<string, string>;
  const id = "probe-1";

  before(async function () {
    cell = await createCell("t-ctr");
    session = await sessionFor(cell);
    digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    container = await session.agent.call("container.create", {
      id,
      imageDigest: digest,
      spec: { command: ["/bin/sh", "-c", PROBE], env: { GREETING: "hello" }, workingDir: "/tmp", user: "0", memory: MEMORY, hostname: "probe" },
    });
    const log = `/var/lib/cellfleet/containers/${id}/stdout.log`;
    const text = await waitFor("the probe output", async () => {
      const result = await cell.exec(["cat", log]);
      return result.stdout.includes("done: yes") ? result.stdout : undefined;
    });
    probe = parseProbe(text);
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
  });

  async function cellNamespace(ns: string): Promise<string> {
    return (await cell.exec(["readlink", `/proc/self/ns/${ns}`])).stdout.trim();
  }

  async function cgroupValue(controller: string, file: string): Promise<string> {
    const result = await cell.exec(["cat", `/sys/fs/cgroup/${controller}/${cell.cgroupParent}/${id}/${file}`]);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout.trim();
  }

  function capabilityMask(name: string): bigint {
    const value = probe.get(name);
    assert.ok(value, `${name} missing from the probe output`);
    return BigInt(`0x${value}`);
  }

  describe("isolation", function () {
    for (const ns of NAMESPACES) {
      it(`has its own ${ns} namespace`, async function () {
        assert.notEqual(probe.get(`ns.${ns}`), await cellNamespace(ns));
      });
    }

    it("maps container root to 4294967294", function () {
      assert.match(probe.get("uid_map") ?? "", new RegExp(`^ ?0 ${MAPPED_ROOT_ID} 1; ?1 1 ${MAPPED_ROOT_ID - 1};$`));
    });

    it("maps container groups like users", function () {
      assert.equal(probe.get("gid_map"), probe.get("uid_map"));
    });

    it("runs as host uid 4294967294 seen from the cell", async function () {
      const status = await cell.exec(["grep", "^Uid:", `/proc/${container.pid}/status`]);
      assert.match(status.stdout, new RegExp(`^Uid:\\s+${MAPPED_ROOT_ID}\\s`));
    });

    it("has an overlay root filesystem", function () {
      assert.match(probe.get("root_mount") ?? "", / \/ [^ ]+ .* - overlay overlay /);
    });

    it("cannot see the cell's filesystem after pivot_root", function () {
      assert.equal(probe.get("cell_state_visible"), "no");
    });

    it("has only its own mounts", function () {
      // overlay root, /proc, /sys, /dev with 6 device binds, pts and shm, masked and read-only /proc paths.
      assert.ok(Number(probe.get("mount_count")) < 30, `mount count ${probe.get("mount_count")}`);
    });

    it("has a writable rootfs", function () {
      assert.equal(probe.get("rootfs_write"), "ok");
    });

    it("keeps rootfs writes out of the image", async function () {
      const result = await cell.exec(["test", "-e", `/var/lib/cellfleet/images/${digest.slice(7)}/rootfs/probe-file`]);
      assert.notEqual(result.code, 0);
    });

    it("has a read-only /proc/sys", function () {
      assert.equal(probe.get("proc_sys_write"), "denied");
    });

    it("has a read-only /sys", function () {
      assert.match(probe.get("sys_mount") ?? "", / \/sys ro,/);
      assert.equal(probe.get("sys_write"), "denied");
    });

    it("sets the hostname", function () {
      assert.equal(probe.get("hostname"), "probe");
    });

    it("starts in the working directory", function () {
      assert.equal(probe.get("cwd"), "/tmp");
    });

    it("has only loopback, and it is up", function () {
      assert.equal(probe.get("interfaces"), "lo");
      assert.equal(probe.get("lo"), "unknown");
    });
  });

  describe("resources", function () {
    it("limits memory", async function () {
      assert.equal(Number(await cgroupValue("memory", "memory.limit_in_bytes")), MEMORY);
    });

    it("sets cpu.shares in proportion to memory", async function () {
      assert.equal(Number(await cgroupValue("cpu", "cpu.shares")), cpuSharesForMemory(MEMORY));
    });

    it("puts the workload in the container cgroup", async function () {
      const procs = await cgroupValue("memory", "cgroup.procs");
      assert.ok(procs.split("\n").includes(String(container.pid)), procs);
    });
  });

  describe("privileges", function () {
    for (const name of [...DROPPED_CAPABILITIES, "CAP_SYS_ADMIN"]) {
      it(`drops ${name}`, function () {
        const bit = 1n << BigInt(CAPABILITY_NUMBERS[name]);
        for (const set of ["CapBnd", "CapEff", "CapPrm"]) assert.equal(capabilityMask(set) & bit, 0n, `${name} in ${set}`);
      });
    }

    it("has empty inheritable and ambient sets", function () {
      assert.equal(capabilityMask("CapInh"), 0n);
      assert.equal(capabilityMask("CapAmb"), 0n);
    });

    it("sets no_new_privs", function () {
      assert.equal(probe.get("NoNewPrivs"), "1");
    });

    it("passes only stdio to the workload", async function () {
      const result = await cell.exec(["ls", `/proc/${container.pid}/fd`]);
      assert.deepEqual(result.stdout.trim().split(/\s+/).sort(), ["0", "1", "2"]);
    });
  });

  describe("lifecycle", function () {
    it("reports the container as running", async function () {
      const observed = await session.agent.call("container.inspect", { id });
      assert.equal(observed?.status, "running");
      assert.equal(observed?.pid, container.pid);
      assert.equal(observed?.memoryBytes, MEMORY);
      assert.equal(observed?.cpuShares, cpuSharesForMemory(MEMORY));
      assert.equal(observed?.hostname, "probe");
      assert.equal(observed?.imageDigest, digest);
    });

    it("adopts a repeated create", async function () {
      const again = await session.agent.call("container.create", {
        id,
        imageDigest: digest,
        spec: { command: ["/bin/sh", "-c", PROBE], env: { GREETING: "hello" }, workingDir: "/tmp", user: "0", memory: MEMORY, hostname: "probe" },
      });
      assert.equal(again.pid, container.pid);
    });

    it("rejects a different spec under the same id", async function () {
      await assert.rejects(
        session.agent.call("container.create", { id, imageDigest: digest, spec: { command: ["/bin/true"], env: {}, workingDir: "/", user: "0", memory: MEMORY } }),
        /already exists with a different spec/,
      );
    });

    it("reports a memory limit changed by hand", async function () {
      const file = `/sys/fs/cgroup/memory/${cell.cgroupParent}/${id}/memory.limit_in_bytes`;
      // Lowering needs no change to the swap limit, which must stay above the memory limit.
      const write = await cell.exec(["sh", "-c", `echo ${MEMORY / 2} > ${file}`]);
      assert.equal(write.code, 0, write.stderr);
      const observed = await session.agent.call("container.inspect", { id });
      assert.equal(observed?.memoryBytes, MEMORY / 2);
      const updated = await session.agent.call("container.update", { id, memory: MEMORY });
      assert.equal(updated.memoryBytes, MEMORY);
    });

    it("deletes every trace", async function () {
      const namespaceInode = probe.get("ns.net");
      await session.agent.call("container.delete", { id });

      const processGone = await cell.exec(["test", "-e", `/proc/${container.pid}`]);
      assert.notEqual(processGone.code, 0, "workload process still exists");
      for (const controller of ["memory", "cpu", "pids"]) {
        const cgroup = await cell.exec(["test", "-e", `/sys/fs/cgroup/${controller}/${cell.cgroupParent}/${id}`]);
        assert.notEqual(cgroup.code, 0, `${controller} cgroup still exists`);
      }
      const state = await cell.exec(["test", "-e", `/var/lib/cellfleet/containers/${id}`]);
      assert.notEqual(state.code, 0, "container directory still exists");
      const mounts = await cell.exec(["grep", "-c", id, "/proc/self/mountinfo"]);
      assert.equal(mounts.stdout.trim(), "0", "mounts naming the container remain");
      const holders = await cell.exec(["sh", "-c", `for p in /proc/[0-9]*; do readlink $p/ns/net; done 2>/dev/null | grep -c "${namespaceInode}" || true`]);
      assert.equal(holders.stdout.trim(), "0", "a process still holds the container's network namespace");
      assert.equal(await session.agent.call("container.inspect", { id }), null);
    });

    it("treats deleting a missing container as done", async function () {
      assert.deepEqual(await session.agent.call("container.delete", { id }), { existed: false });
    });
  });
});
